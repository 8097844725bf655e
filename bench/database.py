"""The scratch PostgreSQL database a benchmark (re)creates on --pg-url (bench/clusters, ingest, search, triage)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def database_url(pg_url: str, database: str) -> str:
    """Return pg_url pointing at another database of the same server."""
    parts = urlsplit(pg_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def database_recreate(pg_url: str, database: str) -> None:
    """Drop the database (when it exists) and create it empty."""
    import psycopg

    with psycopg.connect(database_url(pg_url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
        conn.execute(f'CREATE DATABASE "{database}"')
