"""SQL shared by the search migrations (a module, not a migration: its name starts with an underscore)."""

from __future__ import annotations

import importlib

_initial = importlib.import_module("tickets.migrations.0002_ticket_search_index")
SQLITE_TRIGGERS: list[str] = _initial.SQLITE_TRIGGERS
run = _initial._run
