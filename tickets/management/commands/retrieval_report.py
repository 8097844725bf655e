"""Measure the similar-ticket search on the labelled retrieval set: recall@1/@5 per kind and mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor

from tickets.evaluation import (
    ARTICLE_FILE,
    article_calibrate,
    article_render_calibration,
    retrieval_evaluate,
    retrieval_render_markdown,
)
from tickets.search import MODES


def _require_migrated() -> None:
    """Raise CommandError unless every migration is applied to this database (the set is loaded into its tables)."""
    try:
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as exc:
        raise CommandError(f"cannot read this database's migrations ({exc}); check DATABASE_URL") from exc
    if pending:
        raise CommandError(
            f"this database is not migrated ({len(pending)} migration(s) not applied, the first"
            f" {pending[0][0].app_label}.{pending[0][0].name}): run `python manage.py migrate` first"
        )


class Command(BaseCommand):
    help = (
        "Load the labelled retrieval set into this database (rolled back afterwards) and print recall@1 and "
        "recall@5 per kind of query for the lexical, semantic and hybrid search."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--set",
            dest="directory",
            default=str(Path(settings.BASE_DIR) / "tests" / "fixtures" / "retrieval"),
            help="Folder with tickets.json, queries.json and queries_extra.json.",
        )
        parser.add_argument("--modes", default=",".join(MODES), help=f"Comma-separated, of {', '.join(MODES)}.")
        parser.add_argument("--misses", action="store_true", help="Also list the queries below recall@5 = 1.")
        parser.add_argument(
            "--calibrate-articles",
            action="store_true",
            help=f"Instead, pick the knowledge-article relevance floor on the set's labelled {ARTICLE_FILE}.",
        )

    def handle(
        self, *args: Any, directory: str, modes: str, misses: bool, calibrate_articles: bool, **options: Any
    ) -> None:
        path = Path(directory)
        _require_migrated()
        if calibrate_articles:
            if not (path / ARTICLE_FILE).is_file():
                raise CommandError(f"{path} has no {ARTICLE_FILE}")
            calibration = article_calibrate(directory=path)
            self.stdout.write(article_render_calibration(calibration=calibration))
            # enhancements/offline.py's ARTICLE_MIN_SCORE ships this value (tests/test_offline_note.py checks it).
            self.stdout.write(f"Best floor: {calibration.best.floor}")
            return
        if not (path / "tickets.json").is_file():
            raise CommandError(f"{path} has no tickets.json")
        chosen = tuple(m.strip() for m in modes.split(",") if m.strip())
        unknown = [m for m in chosen if m not in MODES]
        if unknown:
            raise CommandError(f"unknown mode(s) {', '.join(unknown)}; use {', '.join(MODES)}")
        report = retrieval_evaluate(directory=path, modes=chosen)
        self.stdout.write(retrieval_render_markdown(report=report, vendor=connection.vendor))
        if misses:
            for mode, by_kind in report.items():
                self.stdout.write(f"{mode} misses: {' '.join(by_kind['all'].misses)}")
