"""Semantic retrieval quality on the labelled set, stage by stage and per variant (issue 12).

Answers: why did a one-off script (raw cosine over subject + description of the tenant's resolved tickets) find
0.477 of the other-language queries' matches in its top 5 when the app's semantic search found 0.114, with the
same model? It replays the app's path one step at a time on the set of tests/fixtures/retrieval (loaded into the
configured database inside a transaction that is rolled back; SQLite by default, DATABASE_URL for PostgreSQL):

  one-off      float cosine of the query with every resolved ticket of its tenant (subject + description)
  int8         the same with the vectors as stored (int8, from the database)
  prefilter    only the PREFILTER nearest by Hamming distance of the 256 sign bits re-scored (PostgreSQL's path)
  relevance    the app's semantic relevance (SEMANTIC_LOW/HIGH, the background) and floor, one language scale
  app          ticket_search_similar(mode="semantic"): the same with the cross-language scale (CROSS_LOW/HIGH)

then embedding variants (float cosine, ranking only): the wheel's model as it is, without the language
directions (the shipped one), leaving each evaluated language's direction out (does it hold for a language it
was not told about?), and with the resolution appended to the ticket's text. `--calibrate` grids the
cross-language scale against the set's unrelated texts (unrelated.json: none may get a result) and checks it
leave-one-language-out.

    .venv/bin/python -m bench.semantic_quality [--calibrate]
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import django

ROOT = Path(__file__).resolve().parent.parent
SET = ROOT / "tests" / "fixtures" / "retrieval"
LANGUAGES = ("de", "fr", "es", "nl")

Ranker = Callable[[dict[str, Any], Any], list[str]]  # (query, its vector) -> sdp_ids, best first


def _recall(queries: list[dict[str, Any]], found: list[list[str]]) -> dict[str, tuple[int, float, float]]:
    """Return {kind or language: (queries, recall@1, recall@5)} as tickets/evaluation.py counts them."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for query, ids in zip(queries, found, strict=True):
        relevant = set(query["relevant"])
        keys = [query["kind"], "all"] + ([query["language"]] if query["kind"] == "other_language" else [])
        for key in keys:
            row = sums[key]
            row[0] += 1
            row[1] += 1.0 if ids[:1] and ids[0] in relevant else 0.0
            row[2] += len(relevant & set(ids[:5])) / min(len(relevant), 5)
    return {key: (int(n), r1 / n, r5 / n) for key, (n, r1, r5) in sums.items()}


def _line(name: str, figures: dict[str, tuple[int, float, float]]) -> str:
    cells = [f"{figures[k][1]:.3f} / {figures[k][2]:.3f}" for k in ("original", "paraphrased", "other_language")]
    cells += [f"{figures[k][2]:.2f}" for k in LANGUAGES if k in figures]
    return f"| {name} | " + " | ".join(cells) + " |"


HEADER = (
    "| variant | original r@1 / r@5 | paraphrased r@1 / r@5 | other_language r@1 / r@5 | de r@5 | fr r@5 | es r@5"
    " | nl r@5 |\n|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibrate", action="store_true", help="Also grid the cross-language scale.")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    django.setup()
    import numpy as np
    from django.db import connection, transaction

    from tickets import embeddings
    from tickets.evaluation import retrieval_load_history, retrieval_load_queries
    from tickets.models import Ticket
    from tickets.search import hybrid, semantic, ticket_search_similar

    queries = retrieval_load_queries(directory=SET)
    history = json.loads((SET / "tickets.json").read_text(encoding="utf-8"))
    unrelated = json.loads((SET / "unrelated.json").read_text(encoding="utf-8"))
    by_tenant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in history:
        if row["status"] in Ticket.RESOLVED_STATUSES:
            by_tenant[row["tenant"]].append(row)
    shipped = embeddings.LocalProvider()

    def one_off(provider: Any, text: Callable[[dict[str, Any]], str]) -> dict[str, tuple[int, float, float]]:
        matrices = {slug: provider.embed([text(r) for r in rows]) for slug, rows in by_tenant.items()}
        vectors = provider.embed([q["text"] for q in queries])
        found = []
        for query, vector in zip(queries, vectors, strict=True):
            cosines = matrices[query["tenant"]] @ vector
            found.append([by_tenant[query["tenant"]][i]["sdp_id"] for i in np.argsort(-cosines, kind="stable")[:5]])
        return _recall(queries, found)

    def subject_description(row: dict[str, Any]) -> str:
        return embeddings.ticket_embedding_text(row["subject"], row["description"])

    print(f"Database: {connection.vendor}; model {embeddings.LOCAL_MODEL}; PREFILTER {semantic.PREFILTER}.\n")
    print("Stage by stage (semantic only):\n")
    print(HEADER)
    with transaction.atomic():
        tenants = retrieval_load_history(directory=SET, prefix="semantic-quality-")
        stored = {
            slug: list(
                Ticket.objects.filter(tenant=tenant, is_resolved=True).values_list("sdp_id", "embedding", "language")
            )
            for slug, tenant in tenants.items()
        }
        vectors = embeddings.text_embed([q["text"] for q in queries])
        print(_line("one-off: float cosine, subject + description", one_off(shipped, subject_description)))

        def stage(prefilter: int | None, relevance: bool) -> list[list[str]]:
            found = []
            for query, vector in zip(queries, vectors, strict=True):
                rows = stored[query["tenant"]]
                matrix = embeddings.vectors_unpack([blob for _, blob, _ in rows], vector.shape[0])
                cosines = matrix @ vector
                pool = np.arange(len(rows))
                if prefilter is not None:
                    codes = np.unpackbits(np.frombuffer(b"".join(np.packbits(matrix > 0, axis=1)), np.uint8))
                    codes = codes.reshape(len(rows), -1)
                    distance = (codes != (vector > 0)).sum(axis=1)
                    pool = np.argsort(distance, kind="stable")[:prefilter]
                order = sorted(pool, key=lambda i: -cosines[i])
                if relevance:
                    near = order[: hybrid.SEMANTIC_POOL + 1]
                    background = float(cosines[near[-1]]) if len(near) > hybrid.SEMANTIC_POOL else None
                    scored = [(hybrid.semantic_relevance(float(cosines[i]), background), i) for i in near]
                    order = [i for s, i in sorted(scored, key=lambda p: -p[0]) if s >= hybrid.SEMANTIC_FLOOR]
                found.append([rows[i][0] for i in order[:5]])
            return found

        print(_line("int8 vectors as stored", _recall(queries, stage(None, False))))
        print(
            _line(
                f"+ Hamming prefilter {semantic.PREFILTER} of 256 bits",
                _recall(queries, stage(semantic.PREFILTER, False)),
            )
        )
        print(_line("+ relevance and floor, one language scale", _recall(queries, stage(semantic.PREFILTER, True))))

        def app(mode: str) -> dict[str, tuple[int, float, float]]:
            found = [
                [t.sdp_id for t, _ in ticket_search_similar(tenant=tenants[q["tenant"]], text=q["text"], mode=mode)]
                for q in queries
            ]
            return _recall(queries, found)

        print(_line("app: ticket_search_similar(mode=semantic)", app("semantic")))
        print(_line("app: ticket_search_similar(mode=hybrid)", app("hybrid")))
        if args.calibrate:
            _calibrate(queries, unrelated, tenants, hybrid, ticket_search_similar)
        transaction.set_rollback(True)

    print("\nEmbedding variants (float cosine over the tenant's resolved tickets, ranking only, no floor):\n")
    print(HEADER)
    print(_line("wheel's model as it is", one_off(embeddings.LocalProvider(language_free=False), subject_description)))
    print(_line("language directions removed (shipped)", one_off(shipped, subject_description)))
    every = embeddings.LANGUAGE_FREE
    for left_out in LANGUAGES:
        embeddings.LANGUAGE_FREE = tuple(code for code in every if code != left_out)
        print(
            _line(
                f"  the same without {left_out}'s direction", one_off(embeddings.LocalProvider(), subject_description)
            )
        )
    embeddings.LANGUAGE_FREE = every

    def with_resolution(row: dict[str, Any]) -> str:
        return f"{subject_description(row)}\n{row['resolution']}"

    print(_line("shipped, resolution appended to the ticket", one_off(shipped, with_resolution)))


def _calibrate(
    queries: list[dict[str, Any]], unrelated: list[dict[str, Any]], tenants: Any, hybrid: Any, search: Any
) -> None:
    """Grid CROSS_LOW / CROSS_HIGH: recall of the other-language queries, and unrelated texts given a result."""
    foreign = [q for q in queries if q["kind"] == "other_language"]
    saved = hybrid.CROSS_LOW, hybrid.CROSS_HIGH
    print("\nCross-language scale (other_language queries; unrelated.json texts given results lexical search lacks):\n")
    print(
        "| CROSS_LOW | CROSS_HIGH | hybrid r@5 | semantic r@5 | "
        + " | ".join(f"{k} hybrid r@5" for k in LANGUAGES)
        + " | unrelated texts given a result by the semantic part |"
    )
    print("|---|---|---|---|" + "---|" * len(LANGUAGES) + "---|")
    for low in (0.10, 0.125, 0.15, 0.175, 0.20, 0.225, 0.25, 0.30):
        for span in (0.25, 0.35, 0.45):
            hybrid.CROSS_LOW, hybrid.CROSS_HIGH = low, round(low + span, 3)
            figures = {}
            for mode in ("hybrid", "semantic"):
                found = [
                    [t.sdp_id for t, _ in search(tenant=tenants[q["tenant"]], text=q["text"], mode=mode)]
                    for q in foreign
                ]
                figures[mode] = _recall(foreign, found)
            leaks = [  # results the semantic evidence adds (some English ones match lexically on "new", "stuck")
                u["language"]
                for u in unrelated
                for slug in tenants
                if {t.pk for t, _ in search(tenant=tenants[slug], text=u["text"], mode="hybrid")}
                - {t.pk for t, _ in search(tenant=tenants[slug], text=u["text"], mode="lexical")}
            ]
            per = " | ".join(f"{figures['hybrid'][k][2]:.2f}" for k in LANGUAGES)
            print(
                f"| {low:.3f} | {low + span:.3f} | {figures['hybrid']['other_language'][2]:.3f}"
                f" | {figures['semantic']['other_language'][2]:.3f} | {per} | {len(leaks)} {' '.join(sorted(leaks))} |"
            )
    hybrid.CROSS_LOW, hybrid.CROSS_HIGH = saved


if __name__ == "__main__":
    main()
