"""What every import reports, and reading the CSV files two of them take."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ImportReport:
    """What an import did: counts, and every skipped or rejected record with where it is and why."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Return how many records were not imported."""
        return len(self.problems)

    def skip(self, where: str, reason: str) -> None:
        """Record a record that was not imported."""
        self.problems.append((where, reason))

    def reasons(self) -> Counter[str]:
        """Return how often each reason occurred (its text without the record's own details)."""
        return Counter(reason.split(":", 1)[0] for _, reason in self.problems)

    def summary(self) -> str:
        """Return the one-line summary a command prints."""
        return f"{self.created} new, {self.updated} updated, {self.unchanged} unchanged, {self.skipped} skipped"


def open_csv(*, path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) for every record of a UTF-8 CSV file with a header (line 1)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []  # reads line 1
        reader.fieldnames = [(name or "").strip().lower() for name in header]
        line = reader.line_num + 1
        for row in reader:
            yield line, {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)}
            line = reader.line_num + 1
