"""The semantic window kept in the process: each tenant's most recent resolved tickets' codes and vectors.

The hybrid search's nearest neighbours are then a numpy Hamming scan and re-scoring over arrays in memory (well
under a millisecond for 10,000 tickets) instead of a second statement that competes with the lexical one for the
database's cores (docs/benchmarks.md, "the semantic window in the process"). The database stays the truth:
- every search first reads the window's rows written (`updated_at`) since its previous read began, less
  WRITE_SKEW (an index range scan of migration 0013's index, usually no row), and puts them in their place by
  resolution time: a ticket resolved a moment ago, and one embedded or re-embedded after a later-resolved one (the
  sweep's backlog, an import that embeds late, a back-dated import), is found by the next search;
- the whole window is read again SEARCH_WINDOW_CACHE_TTL seconds after it was loaded (on a helper thread while
  searches go on, window_get), which catches what the incremental read cannot see: a ticket that left the window
  (reopened, deleted, embedded by another model) and a row written without `updated_at` (a raw UPDATE);
- the hybrid search re-checks each neighbour it returns against the row it fetches (hybrid.py) and searches again
  without the cache when one differs, so a stale entry is never returned.
Not used inside a transaction (its uncommitted rows are not what other searches see; the test suite and the
retrieval report run in one) nor when SEARCH_WINDOW_CACHE_MB is 0. Windows are kept per (database, tenant,
model), least recently used evicted past SEARCH_WINDOW_CACHE_MB; a process that forks starts its child empty.

The neighbours are exactly those of the statement path (semantic.candidates): on PostgreSQL the PREFILTER nearest
codes (ties by id) re-scored with their vectors, on SQLite every vector of the window, scored alike.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
from django.conf import settings
from django.db import connection
from django.utils import timezone

from tickets.models import Ticket
from tickets.search import semantic

log = logging.getLogger(__name__)

_NULL_KEY = np.iinfo(np.int64).min  # resolved_at NULL: last in the window's order, as NULLS LAST puts it
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ID_BITS = 54  # a Hamming distance and an id in one sortable int64 (ids below 2**54)
# The incremental read goes back this far before the previous read began: `updated_at` is stamped by the writer's
# clock before its statement runs, and the row is seen only once its transaction commits. Every writer of a
# window's columns stamps it just before a statement committed at once or with its page (ticket_upsert,
# ticket_bulk_upsert, indexing's embedding writes: milliseconds to a few hundred); the rest of the margin is for
# the clocks of two hosts. A write committed later than that is caught by the full re-read. The rows written in the
# margin are read again by each search (none while nothing is written; during an import, those of its last
# seconds, of the window's range only).
WRITE_SKEW = timedelta(seconds=2)


@dataclasses.dataclass(frozen=True)
class Window:
    """One tenant's window for one model, in the statement's order (resolved_at descending, then id)."""

    ids: np.ndarray  # int64
    keys: np.ndarray  # int64 microseconds since the epoch of resolved_at (_NULL_KEY for NULL)
    codes: np.ndarray  # the sign bits, packed (uint64 words when the dimension allows, else bytes); PostgreSQL only
    vectors: np.ndarray  # int8 (rows, dim)
    valid: np.ndarray  # bool: the stored vector has the model's dimension (others are in the window, never scored)
    loaded_at: float  # time.monotonic() of the last full read
    since: datetime  # the next incremental read's `updated_at` bound: the last read's start, less WRITE_SKEW
    by_id: np.ndarray | None = None  # the rows in id order (computed when not given)

    def __post_init__(self) -> None:
        if self.by_id is None:
            object.__setattr__(self, "by_id", np.argsort(self.ids, kind="stable"))

    @property
    def nbytes(self) -> int:
        """Return the memory the arrays hold."""
        arrays = (self.ids, self.keys, self.codes, self.vectors, self.valid, self.by_id)
        return sum(a.nbytes for a in arrays if a is not None)


_lock = threading.Lock()
_windows: OrderedDict[tuple, Window] = OrderedDict()
_reloading: set[tuple] = set()  # windows being read again in full on a helper thread


def _forget_all_after_fork() -> None:
    global _lock, _windows, _reloading
    _lock, _windows, _reloading = threading.Lock(), OrderedDict(), set()


os.register_at_fork(after_in_child=_forget_all_after_fork)


def enabled() -> bool:
    """Return whether searches on this thread's connection may use the cache (never inside a transaction)."""
    return float(settings.SEARCH_WINDOW_CACHE_MB) > 0 and not connection.in_atomic_block


def cache_clear() -> None:
    """Drop every window this process holds."""
    with _lock:
        _windows.clear()
        _reloading.clear()


def cache_bytes() -> int:
    """Return the memory the windows this process holds take."""
    with _lock:
        return sum(w.nbytes for w in _windows.values())


def _key(tenant_id: int, model: str, dim: int) -> tuple:
    return (connection.alias, connection.settings_dict["NAME"], tenant_id, model, dim, semantic.SCAN_ROWS)


def forget(*, tenant_id: int, model: str) -> None:
    """Drop the tenant's windows of model (the next search reads them again)."""
    prefix = _key(tenant_id, model, 0)[:4]
    with _lock:
        for key in [key for key in _windows if key[:4] == prefix]:
            del _windows[key]


def _micros(values: list) -> np.ndarray:
    """Return the resolved_at values read (PostgreSQL: microseconds already; SQLite: Django's text) as keys."""
    if connection.vendor == "postgresql":
        return np.array([_NULL_KEY if v is None else v for v in values], dtype=np.int64)
    # NaT is int64's minimum, the NULL key.
    return np.array([v or "NaT" for v in values], dtype="datetime64[us]").astype(np.int64)


def _read(tenant_id: int, model: str, dim: int, since: datetime | None = None, oldest: int | None = None) -> Window:
    """Return the window's rows written at or after `since` (all of them when None), read now; of those, only the
    ones resolved at or after the key `oldest` (those before it would fall out of a full window)."""
    began = timezone.now() - WRITE_SKEW
    table = Ticket._meta.db_table
    params: list = [tenant_id, model]
    newer = ""
    if since is not None:
        newer = " AND updated_at >= %s"
        params.append(connection.ops.adapt_datetimefield_value(since))
        if oldest is not None and oldest != _NULL_KEY:
            newer += " AND resolved_at >= %s"
            params.append(connection.ops.adapt_datetimefield_value(_EPOCH + timedelta(microseconds=oldest)))
    params.append(semantic.SCAN_ROWS)
    postgresql = connection.vendor == "postgresql"
    if postgresql:
        # The window index of migration 0011, read index-only, in its order.
        sql = (
            "SELECT id, (extract(epoch FROM resolved_at) * 1000000)::bigint, embedding_code::text, embedding"  # noqa: S608
            f" FROM {table} WHERE tenant_id = %s AND embedding_model = %s AND is_resolved"
            f" AND embedding_code IS NOT NULL{newer} ORDER BY resolved_at DESC NULLS LAST, id DESC LIMIT %s"
        )
    else:
        sql = (
            f"SELECT id, resolved_at, NULL, embedding FROM {table} WHERE tenant_id = %s"  # noqa: S608
            f" AND embedding_model = %s AND is_resolved AND embedding IS NOT NULL{newer}"
            " ORDER BY resolved_at IS NULL, resolved_at DESC, id DESC LIMIT %s"
        )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if postgresql:
        rows = [row for row in rows if len(row[2]) == dim]
    blobs = [bytes(row[3]) if row[3] is not None else b"" for row in rows]
    valid = np.array([len(b) == dim for b in blobs], dtype=bool)
    vectors = np.frombuffer(b"".join(b if len(b) == dim else bytes(dim) for b in blobs), dtype=np.int8)
    codes = np.zeros((len(rows), 0), dtype=np.uint8)
    if postgresql:
        # The codes as PostgreSQL prints a bit string ("0110..."), all of the model's dimension (the statement
        # could not compare codes of two lengths either).
        bits = np.frombuffer("".join(row[2] for row in rows).encode(), dtype=np.uint8).reshape(len(rows), dim)
        codes = np.packbits(bits == ord("1"), axis=1)
        codes = codes.view(np.uint64) if codes.shape[1] % 8 == 0 else codes
    return Window(
        ids=np.array([row[0] for row in rows], dtype=np.int64),
        keys=_micros([row[1] for row in rows]),
        codes=codes,
        vectors=vectors.reshape(len(rows), dim),
        valid=valid,
        loaded_at=time.monotonic(),
        since=began,
    )


def _as_held(held: Window, new: Window) -> np.ndarray:
    """Return, for each row read, whether the held window has it as read (the same place, code and vector)."""
    if not len(held.ids) or not len(new.ids):
        return np.zeros(len(new.ids), dtype=bool)
    assert held.by_id is not None
    at = held.by_id[np.minimum(np.searchsorted(held.ids[held.by_id], new.ids), len(held.ids) - 1)]
    return (
        (held.ids[at] == new.ids)
        & (held.keys[at] == new.keys)
        & (held.valid[at] == new.valid)
        & (held.vectors[at] == new.vectors).all(axis=1)
        & (held.codes[at] == new.codes).all(axis=1)
    )


def _merged(held: Window, new: Window) -> Window:
    """Return the held window with the rows read since (each replacing its held version), in order, cut to
    SCAN_ROWS."""
    fresh = ~_as_held(held, new)  # a row read again within WRITE_SKEW, unchanged, costs no merge
    if not fresh.any():
        return dataclasses.replace(held, since=new.since)
    keep = ~np.isin(held.ids, new.ids[fresh])  # a ticket written again moves to its new place, with its new vector
    parts = [(new, fresh), (held, keep)]
    ids = np.concatenate([w.ids[m] for w, m in parts])
    keys = np.concatenate([w.keys[m] for w, m in parts])
    order = np.lexsort((ids, keys))[::-1][: semantic.SCAN_ROWS]
    return Window(
        ids=ids[order],
        keys=keys[order],
        codes=np.concatenate([w.codes[m] for w, m in parts])[order],
        vectors=np.concatenate([w.vectors[m] for w, m in parts])[order],
        valid=np.concatenate([w.valid[m] for w, m in parts])[order],
        loaded_at=held.loaded_at,
        since=new.since,
    )


def window_get(
    *, tenant_id: int, model: str, dim: int, later: Callable[[Callable[[], None]], object] | None = None
) -> Window | None:
    """Return the tenant's window brought up to date on this thread's connection, or None when it would not fit
    in SEARCH_WINDOW_CACHE_MB (the statement path is then used).

    A window older than SEARCH_WINDOW_CACHE_TTL is read again in full: by `later` (a helper thread) while this
    search uses the held one brought up to date, or now when there is no `later` or it is twice as old (a tenant
    nobody searched for a while). A full read of 10,000 rows takes 30-60 ms at 1M tickets: on the search's path,
    it was the p95 of the benchmark.
    """
    budget = float(settings.SEARCH_WINDOW_CACHE_MB) * 1024 * 1024
    if semantic.SCAN_ROWS * (dim + dim // 8 + 25) > budget:  # the vector, the code, id, key, valid, by_id
        return None
    key = _key(tenant_id, model, dim)
    ttl = float(settings.SEARCH_WINDOW_CACHE_TTL)
    with _lock:
        held = _windows.get(key)
        age = time.monotonic() - held.loaded_at if held is not None else float("inf")
        reload = later is not None and ttl <= age < 2 * ttl and key not in _reloading
        if reload:
            _reloading.add(key)
    try:
        if held is None or age >= 2 * ttl or (age >= ttl and later is None):
            window = _read(tenant_id, model, dim)
        else:
            full = len(held.ids) >= semantic.SCAN_ROWS
            window = _merged(held, _read(tenant_id, model, dim, held.since, int(held.keys[-1]) if full else None))
    except BaseException:
        if reload:  # the reload was never handed over: the next search past the TTL may start one again
            with _lock:
                _reloading.discard(key)
        raise
    _store(key, window, budget)
    if reload and later is not None:
        later(lambda: _reload(key, tenant_id, model, dim, budget))
    return window


def _store(key: tuple, window: Window, budget: float) -> None:
    with _lock:
        _windows[key] = window
        _windows.move_to_end(key)
        total = sum(w.nbytes for w in _windows.values())
        while total > budget and len(_windows) > 1:
            total -= _windows.popitem(last=False)[1].nbytes


def _reload(key: tuple, tenant_id: int, model: str, dim: int, budget: float) -> None:
    """Read the window again in full and keep it (rows merged meanwhile are read again by the next search)."""
    try:
        _store(key, _read(tenant_id, model, dim), budget)
    except Exception:  # the held window stays; the next search past twice the TTL reads it itself
        log.exception("reading the semantic window of tenant %s again failed", tenant_id)
    finally:
        with _lock:
            _reloading.discard(key)


def prefiltered(distance: np.ndarray, ids: np.ndarray, prefilter: int) -> np.ndarray:
    """Return the rows of ORDER BY bit_count(code # query), id LIMIT prefilter (in no particular order)."""
    if len(ids) <= prefilter:
        return np.arange(len(ids))
    if int(distance.max(initial=0)) < 1 << (63 - _ID_BITS):
        # Distance and id in one int64 key, unique per row (a 256-bit code's distance is at most 256).
        return np.argpartition((distance << _ID_BITS) | ids, prefilter - 1)[:prefilter]
    # Longer codes (a 1536-dimension model's): the packed key would overflow, so sort by both.
    return np.lexsort((ids, distance))[:prefilter]


def nearest(window: Window, vector: np.ndarray, limit: int) -> tuple[dict[int, float], dict[int, bytes]]:
    """Return ({id: cosine} of the window's `limit` nearest tickets to vector, best first, as
    semantic.candidates finds them on this database, {id: stored vector} of those)."""
    if connection.vendor == "postgresql":
        query = np.packbits(np.asarray(vector) > 0)
        query = query.view(np.uint64) if window.codes.dtype == np.uint64 else query
        distance = np.bitwise_count(window.codes ^ query).sum(axis=1, dtype=np.int64)
        rows = prefiltered(distance, window.ids, max(semantic.PREFILTER, limit))
        rows = rows[window.valid[rows]]
    else:
        rows = np.flatnonzero(window.valid)
    cosines = semantic.rows_cosine(window.vectors[rows], vector)
    order = np.lexsort((-window.ids[rows], -cosines))[:limit]
    picked = rows[order]
    near = {int(pk): float(c) for pk, c in zip(window.ids[picked], cosines[order], strict=True)}
    return near, {int(pk): window.vectors[row].tobytes() for pk, row in zip(window.ids[picked], picked, strict=True)}
