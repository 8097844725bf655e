"""Embeddings: the shipped local model loads offline, the OpenAI-compatible provider, storage, backfill, sweep."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from enhancements import tasks
from tests.fakes.openai import FakeOpenAI
from tickets import embeddings
from tickets.indexing import ticket_embed_pending, ticket_embed_pending_count
from tickets.language import text_language, texts_language
from tickets.models import Ticket
from tickets.services import ticket_bulk_upsert, ticket_upsert

ROOT = Path(__file__).resolve().parent.parent
RESOLVED = {"status": "Resolved", "is_resolved": True}


@pytest.fixture
def embeddings_fake(settings):
    """Point the openai embeddings provider at a fake on loopback."""
    with FakeOpenAI() as fake:
        settings.EMBEDDINGS_PROVIDER = "openai"
        settings.EMBEDDINGS_MODEL = "text-embedding-3-small"
        settings.EMBEDDINGS_BASE_URL = fake.url
        settings.EMBEDDINGS_API_KEY = fake.api_key
        settings.EMBEDDINGS_TIMEOUT = 2.0
        yield fake


def test_local_model_loads_and_embeds_with_the_network_refused():
    # A fresh interpreter whose every socket connection and name lookup raises (an audit hook sees them all,
    # whichever library makes them): loading the shipped model and embedding must not need the network.
    script = textwrap.dedent(
        """
        import sys
        attempts = []
        def refuse(event, args):
            if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
                attempts.append((event, repr(args)[:120]))
                raise OSError("network refused by the test: " + event)
        sys.addaudithook(refuse)
        import django, os
        os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
        os.environ["EMBEDDINGS_PROVIDER"] = "local"
        django.setup()
        from tickets.embeddings import text_embed, current_model
        vectors = text_embed(["Outlook keeps asking for my password", "The printer prints blank pages"])
        print(current_model(), vectors.shape, round(float((vectors ** 2).sum(axis=1).min()), 3), attempts)
        """
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "HF_HOME": "/nonexistent/hf"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "wordllama-l2_supercat-256-nolang (2, 256) 1.0 []"


def test_local_vectors_put_the_same_problem_closer_than_another(settings):
    settings.EMBEDDINGS_PROVIDER = "local"
    a, b, c = embeddings.text_embed(
        [
            "A little window keeps asking who I am",
            "Outlook keeps prompting for my password",
            "Paper jam in tray two of the copier",
        ]
    )
    assert float(a @ b) > float(a @ c)


def test_packed_vectors_keep_their_cosines_and_codes_their_signs():
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(50, 256)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    packed = embeddings.vectors_unpack([embeddings.vector_pack(v) for v in vectors], 256)
    exact, approx = vectors @ vectors[0], packed @ vectors[0]
    assert np.max(np.abs(exact - approx)) < 0.02
    code = embeddings.vector_code(vectors[0])
    assert len(code) == 32 and np.array_equal(np.unpackbits(np.frombuffer(code, np.uint8)), vectors[0] > 0)


def test_openai_provider_against_the_fake(embeddings_fake):
    vectors = embeddings.text_embed(["VPN drops on hotel wifi", "VPN drops on hotel wifi", "Printer out of toner"])
    assert vectors.shape == (3, 1536)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) == pytest.approx(1.0, abs=1e-5) and float(vectors[0] @ vectors[2]) < 0.5
    sent = embeddings_fake.requests_log[-1]
    assert sent.path == "/v1/embeddings" and sent.json["model"] == "text-embedding-3-small"
    assert sent.headers["authorization"] == f"Bearer {embeddings_fake.api_key}"
    assert embeddings.current_model() == "text-embedding-3-small"


def test_openai_provider_failures_say_whether_retrying_helps(embeddings_fake, settings):
    settings.EMBEDDINGS_API_KEY = "wrong-key"
    with pytest.raises(embeddings.EmbeddingError) as rejected:
        embeddings.text_embed(["anything"])
    assert rejected.value.permanent
    settings.EMBEDDINGS_API_KEY = embeddings_fake.api_key
    embeddings_fake.fail_next(5, status=503)
    with pytest.raises(embeddings.EmbeddingError) as unavailable:
        embeddings.text_embed(["anything"])
    assert not unavailable.value.permanent


def test_embedding_settings_default_to_the_llms(settings):
    with FakeOpenAI() as fake:
        settings.EMBEDDINGS_PROVIDER = "openai"
        settings.EMBEDDINGS_MODEL = ""
        settings.EMBEDDINGS_BASE_URL = None
        settings.EMBEDDINGS_API_KEY = ""
        settings.OPENAI_BASE_URL = fake.url
        settings.OPENAI_API_KEY = fake.api_key
        assert embeddings.text_embed(["Outlook asks for the password"]).shape == (1, 1536)
        assert fake.requests_log[-1].json["model"] == embeddings.OPENAI_DEFAULT_MODEL


def test_import_stores_vector_model_dimension_and_language(make_tenant):
    acme = make_tenant("acme").tenant
    ticket_bulk_upsert(
        tenant=acme,
        items=[
            (
                "1",
                {"subject": "Outlook keeps asking for my password", "description": "since the MFA change", **RESOLVED},
            ),
            (
                "2",
                {
                    "subject": "Der Drucker druckt nur leere Seiten",
                    "description": "seit heute Morgen im Büro",
                    **RESOLVED,
                },
            ),
        ],
        source=Ticket.Source.IMPORT,
    )
    first, second = Ticket.objects.order_by("sdp_id")
    assert (first.embedding_model, first.embedding_dim, len(first.embedding)) == (embeddings.LOCAL_MODEL, 256, 256)
    assert len(first.embedding_code) == 32
    assert (first.language, second.language) == ("en", "de")


def test_a_changed_text_drops_the_stale_embedding(make_tenant):
    acme = make_tenant("acme").tenant
    ticket_bulk_upsert(tenant=acme, items=[("1", {"subject": "VPN drops", **RESOLVED})], source="import")
    ticket = Ticket.objects.get()
    assert ticket.embedding_model
    ticket_upsert(tenant=acme, sdp_id="1", fields={"subject": "Scanner to email fails"}, source="webhook")
    ticket.refresh_from_db()
    assert ticket.embedding is None and ticket.embedding_model == ""


def test_the_sweep_embeds_tickets_stored_by_resolved_events(make_tenant):
    acme = make_tenant("acme").tenant
    for sdp_id in ("1", "2"):
        ticket_upsert(
            tenant=acme, sdp_id=sdp_id, fields={"subject": f"Printer {sdp_id} jams", **RESOLVED}, source="webhook"
        )
    assert ticket_embed_pending_count() == 2  # the webhook path never embeds
    assert tasks.sweep()["embedded"] == 2
    assert ticket_embed_pending_count() == 0 and tasks.sweep()["embedded"] == 0
    assert set(Ticket.objects.values_list("embedding_model", flat=True)) == {embeddings.LOCAL_MODEL}


def test_reembed_tickets_after_a_model_change_is_resumable_and_idempotent(make_tenant, embeddings_fake, settings):
    acme, other = make_tenant("acme").tenant, make_tenant("other").tenant
    settings.EMBEDDINGS_PROVIDER = "local"
    items = [(str(i), {"subject": f"Laptop {i} will not charge", **RESOLVED}) for i in range(7)]
    ticket_bulk_upsert(tenant=acme, items=items, source="import")
    ticket_bulk_upsert(tenant=other, items=items[:2], source="import")

    settings.EMBEDDINGS_PROVIDER = "openai"
    assert ticket_embed_pending_count(tenant=acme) == 7
    # The endpoint is down: nothing is lost and the command says how to continue.
    embeddings_fake.fail_next(10, status=503, path_contains="/v1/embeddings")
    with pytest.raises(CommandError, match="run the command again"):
        call_command("reembed_tickets", "acme", "--batch-size", "3", "--no-progress")
    assert ticket_embed_pending_count(tenant=acme) == 7
    embeddings_fake.reset()
    # A run stopped after one batch (as by Ctrl-C) keeps that batch; the next run embeds only the rest.
    assert ticket_embed_pending(tenant=acme, limit=3, batch_size=3) == 3
    assert ticket_embed_pending_count(tenant=acme) == 4
    call_command("reembed_tickets", "acme", "--batch-size", "3", "--no-progress")
    assert sum(len(r.json["input"]) for r in embeddings_fake.requests_log) == 7
    assert ticket_embed_pending_count(tenant=acme) == 0 and ticket_embed_pending_count(tenant=other) == 2
    stored = Ticket.objects.filter(tenant=acme).values_list("embedding_model", "embedding_dim").order_by().distinct()
    assert list(stored) == [("text-embedding-3-small", 1536)]
    calls = len(embeddings_fake.requests_log)
    call_command("reembed_tickets", "acme", "--no-progress")  # nothing left: no call at all
    assert len(embeddings_fake.requests_log) == calls
    call_command("reembed_tickets", "--all", "--no-progress")
    assert ticket_embed_pending_count() == 0


def test_reembed_tickets_refuses_bad_arguments(make_tenant, settings):
    make_tenant("acme")
    with pytest.raises(CommandError, match="slug or --all"):
        call_command("reembed_tickets")
    with pytest.raises(CommandError, match="No tenant"):
        call_command("reembed_tickets", "nope")
    settings.EMBEDDINGS_PROVIDER = "off"
    with pytest.raises(CommandError, match="off"):
        call_command("reembed_tickets", "acme")


def _corpus() -> list[str]:
    """Ticket texts of the labelled set (five languages) and strings that stress tokenizers and the detector."""
    fixtures = ROOT / "tests" / "fixtures" / "retrieval"
    texts = [f"{t['subject']}\n{t['description']}" for t in json.loads((fixtures / "tickets.json").read_text())]
    texts += [q["text"] for q in json.loads((fixtures / "queries_extra.json").read_text())]
    rng = random.Random(12)
    alphabet = [*"abc ABC  \n\t▁é日本😀<>s/&;0x", "<s>", "</s>", "<unk>", "  ", "▁▁", "\xa0", "ÄÖÜß", "русский"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(1500)]
    return texts + ["", " ", "  a", "a  ", "▁", " ▁ x", "\n", "<s>hello", "x</s>y", "SHOUTING IN CAPITALS ONLY"]


def test_local_tokens_a_word_at_a_time_are_the_tokenizers():
    # The provider tokenizes each distinct word once and caches it; the ids must be those of the whole text.
    local = embeddings.LocalProvider()
    texts = _corpus()
    expected = [e.ids for e in local._tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert local._ids(texts) == expected
    assert local._ids(texts) == expected  # from the cache this time
    assert sum(map(len, expected)) > 50_000


def test_batched_language_detection_answers_as_classify_does():
    texts = _corpus()
    one_by_one = [text_language(text) for text in texts]
    assert texts_language(texts) == one_by_one
    pages = range(0, 70, 7)
    assert [texts_language(texts[i : i + 7]) for i in pages] == [one_by_one[i : i + 7] for i in pages]
    assert {"en", "de", "fr", "es", "nl"} <= set(one_by_one) and "" in one_by_one
    assert texts_language([]) == []


# What LOCAL_MODEL's vectors are made of: the wheel's token vectors and the stop-word lists whose directions are
# projected out. A change to either (an upgraded wordllama or stop-words) changes every vector without changing
# the model's name, so stored and new vectors would be compared as if alike: rename LOCAL_MODEL (the sweep and
# reembed_tickets then re-embed every stored ticket) and update these fingerprints.
LOCAL_INPUTS = {"weights": "c2c596675fd628bc", "stop_words": "7e0ff75172ef50a7"}


def test_the_local_models_name_changes_with_what_its_vectors_are_made_of():
    import hashlib

    import wordllama
    from stop_words import get_stop_words
    from wordllama import WordLlama

    model = WordLlama.load(
        config="l2_supercat", dim=256, cache_dir=Path(wordllama.__file__).parent, disable_download=True
    )
    weights = np.ascontiguousarray(np.asarray(model.embedding, dtype=np.float32)).tobytes()
    words = hashlib.sha256()
    for language in embeddings.LANGUAGE_FREE:
        words.update(language.encode() + b"\0" + "\n".join(get_stop_words(language)).encode() + b"\0")
    found = {"weights": hashlib.sha256(weights).hexdigest()[:16], "stop_words": words.hexdigest()[:16]}
    assert found == LOCAL_INPUTS, f"the local model's inputs changed: rename {embeddings.LOCAL_MODEL!r} ({found})"
    assert embeddings.LOCAL_MODEL.endswith("-nolang")


def test_the_wheels_model_without_the_projection_has_its_own_name():
    plain = embeddings.LocalProvider(language_free=False)
    assert plain.model != embeddings.LOCAL_MODEL and embeddings.LocalProvider().model == embeddings.LOCAL_MODEL
