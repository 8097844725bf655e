"""Bulk imports: resolved tickets from a tenant's ServiceDesk Plus, assets from CSV, articles from files or CSV.

Every import validates each record, imports the good ones, reports the bad ones with where they are and why,
and is idempotent: running it again creates nothing twice.
"""

from tickets.imports.articles import article_import
from tickets.imports.assets import asset_import_csv
from tickets.imports.from_sdp import TicketImportReport, ticket_import_from_sdp, ticket_import_window
from tickets.imports.report import ImportReport

__all__ = [
    "ImportReport",
    "TicketImportReport",
    "article_import",
    "asset_import_csv",
    "ticket_import_from_sdp",
    "ticket_import_window",
]
