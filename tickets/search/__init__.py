"""Context search: similar resolved tickets, assets mentioned in a text, matching articles.

One interface, two lexical backends chosen by the database vendor (postgres.py: PostgreSQL full-text search over
a tenant-keyed GIN index; sqlite.py: SQLite FTS5), scoring alike (terms.py), fused with the semantic candidates
(semantic.py) by hybrid.py. context.py finds assets and articles.
"""

from tickets.search.context import article_find_relevant, asset_find_mentioned, ips_in
from tickets.search.hybrid import MODES, fused_score, semantic_relevance, ticket_search_similar
from tickets.search.terms import MIN_SCORE, STOPWORDS, identifiers_in

__all__ = [
    "MIN_SCORE",
    "MODES",
    "STOPWORDS",
    "article_find_relevant",
    "asset_find_mentioned",
    "fused_score",
    "identifiers_in",
    "ips_in",
    "semantic_relevance",
    "ticket_search_similar",
]
