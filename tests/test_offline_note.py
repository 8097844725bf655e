"""The offline note: causes, actions and outcomes told apart, actions ranked and merged, articles above a floor."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from enhancements import offline
from enhancements.context import context_gather
from enhancements.llm import OfflineProvider
from enhancements.offline import classify, merge_actions, note_parts
from tickets.evaluation import article_calibrate, retrieval_load_history, retrieval_load_queries
from tickets.imports import article_import
from tickets.models import Ticket
from tickets.search import ticket_search_similar
from tickets.services import article_upsert, ticket_bulk_upsert

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
RETRIEVAL = ROOT / "tests" / "fixtures" / "retrieval"
DEMO = ROOT / "tickets" / "fixtures" / "demo"
# Phrases only an outcome or a cause would contain: none may appear in a suggested step.
NOT_A_STEP = ("stayed connected", "has stayed", "happy for the ticket", "user confirmed", "no further prompts",
              "confirmed working", "no more prompts", "no recurrence", "stable for")  # fmt: skip


def test_the_demo_resolution_is_told_apart():
    assert classify("Stale Office tokens after the password reset.") == "cause"
    assert classify("Outlook has stayed connected since.") == "outcome"
    assert classify("Cleared the cached credentials in Credential Manager and signed out of Office.") == "action"
    assert classify("On LT-0488 opened Credential Manager and removed every MicrosoftOffice16_Data entry.") == "action"
    assert classify("User happy for the ticket to be closed.") == "outcome"
    assert classify("Sync completed overnight.") != "action"


def test_actions_used_by_more_similar_tickets_come_first_and_near_duplicates_merge():
    similar = [
        {"sdp_id": "1", "score": 0.9, "resolution": "Replaced the toner cartridge. Printing fine since."},
        {"sdp_id": "2", "score": 0.8, "resolution": "Power-cycled the switch. Restarted the print spooler service."},
        {"sdp_id": "3", "score": 0.7, "resolution": "Restarted the print spooler service on print-01."},
    ]
    actions, _ = note_parts(similar)
    assert actions[0].text.startswith("Restart the print spooler") and actions[0].tickets == ["2", "3"]
    assert [a.text for a in actions].count("Replace the toner cartridge.") == 1
    assert all("since" not in a.text.lower() for a in actions)
    merged = merge_actions([("Restart the spooler.", "1", 0.5), ("Reboot the firewall.", "2", 0.9)])
    assert [m.text for m in merged] == ["Reboot the firewall.", "Restart the spooler."]


@pytest.fixture
def demo(make_tenant):
    tenant = make_tenant("acme").tenant
    rows = json.loads((DEMO / "tickets.json").read_text(encoding="utf-8"))
    items = [
        (str(r["sdp_id"]), {k: r.get(k, "") for k in ("subject", "description", "resolution")} | {"is_resolved": True})
        for r in rows
    ]
    ticket_bulk_upsert(tenant=tenant, items=items, source=Ticket.Source.IMPORT)
    article_import(tenant=tenant, path=DEMO / "articles")
    return tenant


def _note(tenant, subject: str, description: str) -> dict:
    ticket = Ticket.objects.create(tenant=tenant, sdp_id=f"new-{abs(hash(subject))}", subject=subject,
                                   description=description, status="Open")  # fmt: skip
    context = context_gather(ticket=ticket)
    return OfflineProvider().generate(ticket=ticket, context=context).output | {"context": context}


def test_demo_note_acts_states_causes_and_skips_the_unrelated_article(demo):
    note = _note(
        demo,
        "Outlook keeps asking for my password since the MFA change",
        "Since MFA was switched on for our team yesterday, Outlook on my laptop keeps asking for my password.",
    )
    steps = note["suggested_steps"]
    assert steps[0].startswith(("Remove", "Clear", "Delete", "Open")), steps
    assert not any(p in s.lower() for s in steps for p in NOT_A_STEP), steps
    assert not any("Same cause as" in c for c in note["probable_causes"])
    assert any("token" in c.lower() or "credential" in c.lower() for c in note["probable_causes"])
    attached = [s for s in steps if "knowledge article" in s]
    assert attached and all("MTU" not in s for s in attached), steps
    assert len(steps) <= 8


def test_note_language_is_recorded_and_named(demo):
    note = _note(demo, "Mein Outlook fragt ständig nach dem Passwort", "Seit gestern fragt Outlook immer wieder.")
    assert note["context"]["language"] == "de"
    assert "Written in German." in note["summary"]
    assert Ticket.objects.get(subject__startswith="Mein Outlook").language == "de"


def test_note_quality_on_the_labelled_set():
    tenants = retrieval_load_history(directory=RETRIEVAL)
    queries = [q for q in retrieval_load_queries(directory=RETRIEVAL) if q["kind"] in ("original", "paraphrased")]
    right_first, outcome_steps, total_steps = 0, 0, 0
    for query in queries:
        tenant = tenants[query["tenant"]]
        similar = [
            {"sdp_id": t.sdp_id, "subject": t.subject, "score": s, "resolution": t.resolution}
            for t, s in ticket_search_similar(tenant=tenant, text=query["text"])
        ]
        actions, _ = note_parts(similar)
        if actions and set(actions[0].tickets) & set(query["relevant"]):
            right_first += 1
        total_steps += len(actions[:5])
        outcome_steps += sum(1 for a in actions[:5] if any(p in a.text.lower() for p in NOT_A_STEP))
    share = right_first / len(queries)
    print(
        f"first step from a relevant ticket: {share:.3f} of {len(queries)}; outcome steps {outcome_steps}/{total_steps}"
    )
    assert share >= 0.75
    assert outcome_steps <= 0.02 * total_steps


def test_the_shipped_article_floor_is_the_calibrated_one():
    # `manage.py retrieval_report --calibrate-articles` picks the floor; the note must use that value.
    calibration = article_calibrate(directory=RETRIEVAL)
    assert calibration.best.floor == offline.ARTICLE_MIN_SCORE
    shipped, hand_set = calibration.at(offline.ARTICLE_MIN_SCORE), calibration.at(0.35)
    assert shipped.f1 > hand_set.f1 and shipped.none_with_article < hand_set.none_with_article
    assert shipped.precision >= 0.7 and shipped.recall >= 0.6
    assert calibration.none_queries >= 100 and calibration.queries - calibration.none_queries >= 50


def test_no_article_is_attached_to_a_query_labelled_as_having_none_unless_the_floor_lets_it(make_tenant):
    # Through the worker's own context and the offline note: an article below the floor never reaches the note,
    # and the labelled no-article queries that still get one are exactly those the calibration counts.
    tenants = retrieval_load_history(directory=RETRIEVAL)
    articles = json.loads((RETRIEVAL / "articles.json").read_text(encoding="utf-8"))
    for a in articles:
        article_upsert(tenant=tenants[a["tenant"]], title=a["title"], url=a["url"], body=a["body"], tags=a["tags"])
    answered = {query_id for a in articles for query_id in a["answers"]}
    queries = [q for q in retrieval_load_queries(directory=RETRIEVAL) if q["kind"] == "original"]
    wrong, right = 0, 0
    for number, query in enumerate(queries):
        subject, _, description = query["text"].partition("\n")
        ticket = Ticket.objects.create(tenant=tenants[query["tenant"]], sdp_id=f"new-{number}", subject=subject,
                                       description=description, status="Open")  # fmt: skip
        context = context_gather(ticket=ticket)
        note = OfflineProvider().generate(ticket=ticket, context=context).output
        attached = [s for s in note["suggested_steps"] if "knowledge article" in s]
        assert all(a["score"] >= offline.ARTICLE_MIN_SCORE for a in context["articles"])
        assert len(attached) == len(context["articles"])
        if query["id"] in answered:
            right += bool(attached)
        else:
            wrong += bool(attached)
    labelled = sum(1 for q in queries if q["id"] in answered)
    unlabelled = len(queries) - labelled
    print(f"article attached: {right} of {labelled} labelled queries, {wrong} of {unlabelled} labelled as having none")
    assert right >= 0.6 * labelled
    # 7 of 58 measured (docs/benchmarks.md, Import > article floor: the scorer inflates scores in tenants with few
    # articles); 0.35, the hand-set floor, let 21 through.
    assert wrong <= 0.15 * unlabelled, wrong


def test_retrieval_report_calibrates_the_article_floor():
    out = io.StringIO()
    call_command("retrieval_report", "--calibrate-articles", stdout=out)
    text = out.getvalue()
    assert f"| {offline.ARTICLE_MIN_SCORE:.4g} (best) |" in text and f"Best floor: {offline.ARTICLE_MIN_SCORE}" in text
    assert Ticket.objects.count() == 0  # loaded inside a transaction that is rolled back
    with pytest.raises(CommandError, match="has no articles.json"):
        call_command("retrieval_report", "--calibrate-articles", "--set", str(DEMO))
