"""Per-tenant note language for the LLM path (default English), with the ticket's own language named."""

from __future__ import annotations

import copy

import pytest
from django.core.management import call_command

from enhancements.context import context_gather
from enhancements.llm import enhancement_generate
from enhancements.models import Enhancement
from enhancements.services import enhancement_process
from tests.fakes.fixtures import servicedesk_fixture
from tickets.models import Tenant, Ticket

pytestmark = pytest.mark.django_db


def _prompt_sent(fake) -> str:
    messages = fake.requests_log[-1].json["messages"]
    return messages[-1]["content"]


def test_the_llm_writes_in_the_tenants_note_language_and_quotes_the_requester(make_tenant, openai_fake):
    tenant = make_tenant("acme", note_language="DE").tenant
    assert tenant.note_language == "de"
    ticket = Ticket.objects.create(
        tenant=tenant,
        sdp_id="1",
        subject="Mon imprimante n'imprime plus",
        description="Depuis ce matin l'imprimante du deuxième étage affiche « erreur 0x61011bed ».",
    )
    enhancement_generate(tenant=tenant, ticket=ticket, context=context_gather(ticket=ticket))
    prompt = _prompt_sent(openai_fake)
    assert "Write every text field in German" in prompt
    assert "The ticket is written in French" in prompt and "quote them as written" in prompt


def test_the_default_note_language_is_english(make_tenant, openai_fake):
    tenant = make_tenant("acme").tenant
    ticket = Ticket.objects.create(tenant=tenant, sdp_id="2", subject="VPN drops", description="Every hour.")
    enhancement_generate(tenant=tenant, ticket=ticket, context=context_gather(ticket=ticket))
    assert "Write every text field in English" in _prompt_sent(openai_fake)


def test_create_tenant_sets_the_note_language(db):
    call_command("create_tenant", "globex", "--name", "Globex", "--note-language", "nl")
    assert Tenant.objects.get(slug="globex").note_language == "nl"


@pytest.mark.parametrize("llm", ["openai", "offline"])
def test_the_posted_note_states_the_tickets_language(llm, make_tenant, post_webhook, sdp, request):
    # Through the whole pipeline (webhook, worker, SDP): the note names the language the ticket was written in.
    if llm == "openai":
        request.getfixturevalue("openai_fake")
    created = copy.deepcopy(servicedesk_fixture("webhook__request_created"))
    created["request"]["subject"] = "Der Drucker im zweiten Stock druckt nur leere Seiten"
    created["request"]["description"] = "Seit heute Morgen kommen aus dem Drucker nur leere Blätter heraus."
    sdp.add_request(created["request"])
    tenant = make_tenant("acme", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key).tenant
    response = post_webhook("acme", created, secret=Tenant.objects.get(pk=tenant.pk).webhook_secret)
    enhancement_id = response.json()["enhancement_id"]
    assert enhancement_process(enhancement_id=enhancement_id) == Enhancement.Status.POSTED
    assert Enhancement.objects.get(pk=enhancement_id).ticket.language == "de"
    (note,) = sdp.notes[created["request"]["id"]]
    assert "Ticket language: German" in note["description"]
