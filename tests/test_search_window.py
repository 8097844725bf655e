"""The semantic window held in the process (tickets/search/window.py): the same results as the statement, fresh."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import numpy as np
import pytest
from django.db import connection, transaction
from django.utils import timezone

from tests.processes import wait_for
from tests.search_helpers import FILLER
from tickets import embeddings
from tickets.indexing import ticket_embed_pending, ticket_index
from tickets.models import Ticket
from tickets.search import hybrid, semantic, ticket_search_similar, window
from tickets.services import ticket_bulk_upsert, ticket_upsert

pytestmark = pytest.mark.django_db(transaction=True)  # the cache serves committed rows only

HISTORY = {
    **FILLER,
    "battery-again": ("Laptop battery not charging", "Plugged in, not charging, the percentage drops."),
    "code": ("Mapped drive not opening", "The S drive will not open, error 0x80070035."),
    "only-code": ("Finance share unreachable", "Windows shows 0x80070035 for the finance share."),
}
QUERIES = [
    "Computer says I'm unplugged from power\nIt is on the cable but the percentage keeps falling.",
    "S drive will not open\nError 0x80070035 when I click the mapped drive.",
    "The little window keeps asking who I am\nEvery few minutes Outlook wants my password again.",
    "Screen goes on and off\nMy second display blinks when the laptop is in the dock.",
]
BATTERY = QUERIES[0]


def _history(tenant, rows: dict[str, tuple[str, str]], days_ago: int = 1) -> None:
    now = timezone.now()
    items = [
        (
            sdp_id,
            {
                "subject": s,
                "description": d,
                "status": "Resolved",
                "is_resolved": True,
                "resolved_at": now - timedelta(days=days_ago, minutes=index),
            },
        )
        for index, (sdp_id, (s, d)) in enumerate(rows.items())
    ]
    ticket_bulk_upsert(tenant=tenant, items=items, source=Ticket.Source.IMPORT)


def _found(results: list[tuple[Ticket, float]]) -> list[tuple[str, float]]:
    return [(ticket.sdp_id, score) for ticket, score in results]


def _without_cache(settings, **kwargs) -> list[tuple[str, float]]:
    held = settings.SEARCH_WINDOW_CACHE_MB
    settings.SEARCH_WINDOW_CACHE_MB = 0
    try:
        return _found(ticket_search_similar(**kwargs))
    finally:
        settings.SEARCH_WINDOW_CACHE_MB = held


def test_the_cached_window_gives_the_statements_results_to_the_last_bit(make_tenant, settings, monkeypatch):
    # A prefilter of 4 codes: on PostgreSQL the Hamming ranking (ties by id) decides which vectors are scored.
    monkeypatch.setattr(semantic, "PREFILTER", 4)
    acme, other = make_tenant("acme").tenant, make_tenant("other").tenant
    _history(acme, HISTORY)
    _history(other, {"9": HISTORY["battery"]})
    for tenant in (acme, other):
        for mode in ("hybrid", "semantic"):
            for text in QUERIES:
                for exclude in (None, "battery"):
                    kwargs = {"tenant": tenant, "text": text, "mode": mode, "exclude_sdp_id": exclude}
                    cached = _found(ticket_search_similar(**kwargs))
                    with transaction.atomic():  # a transaction never uses the cache: the statement path
                        serial = _found(ticket_search_similar(**kwargs))
                    assert cached == _without_cache(settings, **kwargs) == serial, (tenant.slug, mode, text)
                    assert exclude not in [sdp_id for sdp_id, _ in cached]
    assert window.cache_bytes() > 0
    results = ticket_search_similar(tenant=acme, text=QUERIES[1])
    assert [ticket.sdp_id for ticket, _ in results][:1] == ["code"]
    # The tickets the lexical statement returned whole (PostgreSQL) are the rows the ORM loads.
    fields = [f.attname for f in Ticket._meta.concrete_fields]
    for ticket, _ in results:
        stored = Ticket.objects.get(pk=ticket.pk)
        assert [getattr(ticket, f) for f in fields] == [getattr(stored, f) for f in fields]
    # The neighbours themselves: the same tickets, the same cosines, the same order (the two copies of a text
    # tie, and the higher id wins in both).
    model = embeddings.current_model()
    for text in QUERIES:
        vector = embeddings.text_embed([text])[0]
        held = window.window_get(tenant_id=acme.pk, model=model, dim=vector.shape[0])
        near, kept = window.nearest(held, vector, 6)
        statement = semantic.candidates(acme, vector, limit=6, model=model)[0]
        assert list(near.items()) == list(statement.items())
        stored = dict(Ticket.objects.filter(pk__in=list(kept)).values_list("pk", "embedding"))
        assert kept == {pk: bytes(blob) for pk, blob in stored.items()}


def _same_as_statement(settings, kwargs: dict) -> list[str]:
    """Search with the window, check the statement path finds the same, return the sdp ids found."""
    cached = _found(ticket_search_similar(**kwargs))
    assert cached == _without_cache(settings, **kwargs)
    return [sdp_id for sdp_id, _ in cached]


def test_the_cached_window_follows_the_history(make_tenant, settings):
    acme = make_tenant("acme").tenant
    _history(acme, HISTORY, days_ago=10)
    kwargs = {"tenant": acme, "text": BATTERY, "mode": "semantic"}

    def same_as_statement() -> list[str]:
        return _same_as_statement(settings, kwargs)

    assert same_as_statement()[:2] == ["battery", "battery-again"]  # the same score: the later resolved first
    assert window.cache_bytes() > 0
    # Resolved a moment ago: found by the next search (the rows written since the last read are read every time).
    _history(acme, {"new": HISTORY["battery"]}, days_ago=0)
    assert same_as_statement()[0] == "new"
    # Reopened, re-embedded from another text, deleted: the window still holds them until it is read again, but
    # a search never returns them as they were (each neighbour returned is checked against its row).
    Ticket.objects.filter(tenant=acme, sdp_id="new").update(is_resolved=False)
    assert "new" not in same_as_statement()
    usb = Ticket.objects.get(tenant=acme, sdp_id="usb")
    Ticket.objects.filter(tenant=acme, sdp_id="battery-again").update(
        embedding=usb.embedding, embedding_code=usb.embedding_code
    )
    assert same_as_statement()[0] == "battery"
    Ticket.objects.filter(tenant=acme, sdp_id="battery").delete()
    assert "battery" not in same_as_statement()
    # A back-dated import is older than the newest ticket held, but written now: the next search finds it.
    _history(acme, {"old": HISTORY["battery"]}, days_ago=300)
    assert same_as_statement()[0] == "old"
    # A row written without updated_at (a raw UPDATE) is not seen by the incremental read: the full read after
    # SEARCH_WINDOW_CACHE_TTL brings it in.
    _history(acme, {"older": HISTORY["battery"]}, days_ago=200)
    Ticket.objects.filter(tenant=acme, sdp_id="older").update(updated_at=timezone.now() - timedelta(days=200))
    assert "older" not in [sdp_id for sdp_id, _ in _found(ticket_search_similar(**kwargs))]
    settings.SEARCH_WINDOW_CACHE_TTL = 0
    assert same_as_statement()[0] == "older"


def test_a_ticket_embedded_after_a_later_resolved_one_was_read_is_found_by_the_next_search(make_tenant, settings):
    acme = make_tenant("acme").tenant
    _history(acme, HISTORY, days_ago=10)
    kwargs = {"tenant": acme, "text": BATTERY, "mode": "semantic"}

    def same_as_statement() -> list[str]:
        return _same_as_statement(settings, kwargs)

    assert "excel" not in same_as_statement() and window.cache_bytes() > 0
    # Two tickets resolved ten days ago are edited into the battery problem (their embeddings cleared for the
    # sweep), then a ticket resolved today is read by a search: it is the newest the window holds.
    for sdp_id in ("excel", "toner"):
        ticket_upsert(
            tenant=acme,
            sdp_id=sdp_id,
            fields={"subject": HISTORY["battery"][0], "description": HISTORY["battery"][1]},
            source=Ticket.Source.WEBHOOK,
        )
    _history(acme, {"new": HISTORY["camera"]}, days_ago=0)
    assert "excel" not in same_as_statement()
    # The worker re-embeds one, the sweep the other: both are older than the newest held, and the next search has
    # them (before, the incremental read took only rows resolved after the newest held: they waited for the full
    # re-read, up to SEARCH_WINDOW_CACHE_TTL, and the window meanwhile held their old vectors).
    ticket_index(ticket=Ticket.objects.get(tenant=acme, sdp_id="excel"))
    assert "excel" in same_as_statement()[:3]
    assert ticket_embed_pending(tenant=acme) == 1
    assert {"excel", "toner"} <= set(same_as_statement()[:4])


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the helpers run on PostgreSQL only")
def test_a_window_past_its_ttl_is_read_again_on_a_helper_while_searches_go_on(make_tenant, settings):
    acme = make_tenant("acme").tenant
    _history(acme, HISTORY, days_ago=10)
    settings.SEARCH_WINDOW_CACHE_TTL = 1.0
    kwargs = {"tenant": acme, "text": BATTERY, "mode": "hybrid"}
    assert ticket_search_similar(**kwargs)
    ((key, first),) = window._windows.items()
    _history(acme, {"old": HISTORY["battery"]}, days_ago=300)
    # Written without updated_at (a raw UPDATE): only a full read sees it.
    Ticket.objects.filter(tenant=acme, sdp_id="old").update(updated_at=timezone.now() - timedelta(days=300))
    time.sleep(1.05)
    ticket_search_similar(**kwargs)  # past the TTL: served from the window held, read again on a helper
    wait_for(lambda: window._windows[key].loaded_at > first.loaded_at, timeout=10, what="the window read again")
    assert not window._reloading
    assert "old" in [t.sdp_id for t, _ in ticket_search_similar(**kwargs)]
    assert _found(ticket_search_similar(**kwargs)) == _without_cache(settings, **kwargs)


def test_the_windows_held_stay_within_their_budget_and_not_in_a_transaction(make_tenant, settings, monkeypatch):
    monkeypatch.setattr(semantic, "SCAN_ROWS", 10)
    tenants = [make_tenant(slug).tenant for slug in ("acme", "globex", "initech")]
    for tenant in tenants:
        _history(tenant, HISTORY)
    per_window = 10 * (256 + 256 // 8 + 25)
    settings.SEARCH_WINDOW_CACHE_MB = 2.5 * per_window / 2**20  # room for two windows
    for tenant in tenants:
        ticket_search_similar(tenant=tenant, text=BATTERY)
    held = list(window._windows)
    assert [key[2] for key in held] == [tenants[1].pk, tenants[2].pk]  # the least recently used went
    assert 0 < window.cache_bytes() <= settings.SEARCH_WINDOW_CACHE_MB * 2**20
    window.cache_clear()
    with transaction.atomic():
        ticket_search_similar(tenant=tenants[0], text=BATTERY)
    settings.SEARCH_WINDOW_CACHE_MB = 0
    ticket_search_similar(tenant=tenants[0], text=BATTERY)
    assert window.cache_bytes() == 0


def test_a_forked_child_starts_without_the_parents_helpers_and_windows(make_tenant):
    acme = make_tenant("acme").tenant
    _history(acme, HISTORY)
    before = _found(ticket_search_similar(tenant=acme, text=BATTERY))
    assert window.cache_bytes() > 0
    assert (hybrid._helpers is not None) == (connection.vendor == "postgresql")
    pid = os.fork()
    if pid == 0:  # the child touches no connection: it only reports what it inherited
        os._exit(0 if hybrid._helpers is None and window.cache_bytes() == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's helpers and their connections still work (the child closed none of them).
    assert _found(ticket_search_similar(tenant=acme, text=BATTERY)) == before


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the helpers run on PostgreSQL only")
def test_an_idle_helper_closes_its_connection_past_conn_max_age(make_tenant, monkeypatch):
    acme = make_tenant("acme").tenant
    _history(acme, HISTORY)
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 3)  # read when the helper connects

    def others() -> set[int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return {pid for (pid,) in cursor.fetchall()}

    # Only the connections the search opens count (an earlier test's thread may hold one of its own, e.g. a
    # pipeline test's heartbeat thread).
    before = others()
    assert ticket_search_similar(tenant=acme, text=BATTERY)
    helper = others() - before
    assert hybrid._helpers is not None and len(helper) == 1  # the helper's connection, idle now
    wait_for(lambda: not helper & others(), timeout=20, what="the idle helper to close its connection", interval=0.1)
    assert hybrid._helpers.threads[0].is_alive()
    assert ticket_search_similar(tenant=acme, text=BATTERY)  # it connects again when a search comes


def test_the_prefilter_of_long_codes_is_the_statements_order():
    # A 1536-dimension model's Hamming distances pass 511, where distance and id packed in one int64 overflowed
    # and the farthest rows sorted first (before: 0 of the true nearest 21 in the window's top 21).
    from tickets.search.window import prefiltered

    rng = np.random.default_rng(7)
    codes = rng.integers(0, 2, size=(3000, 1536), dtype=np.uint8)
    query = rng.integers(0, 2, size=1536, dtype=np.uint8)
    codes[:50] = query ^ (rng.random((50, 1536)) < 0.05)  # 50 near ones
    ids = rng.permutation(10**6)[:3000].astype(np.int64)
    distance = (codes != query).sum(axis=1).astype(np.int64)
    assert distance.max() > 511
    expected = sorted(range(3000), key=lambda row: (distance[row], ids[row]))[:200]
    assert set(prefiltered(distance, ids, 200).tolist()) == set(expected)
    short = distance % 257  # a 256-bit code's distances: the packed key
    expected = sorted(range(3000), key=lambda row: (short[row], ids[row]))[:200]
    assert set(prefiltered(short, ids, 200).tolist()) == set(expected)
