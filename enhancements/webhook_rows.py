"""The webhook store's rows: each row's INSERT (Django's SQL) and parameters, without a model instance.

`plain_insert(model, values, conn)` returns what Django's insert compiler would send for `model(**values)`:
the SQL (compiled once per shape and cached), the parameters (defaults, pre_save, get_db_prep_save, worked out
once per shape of row where they do not depend on the values) and the columns. enhancements/webhook_fastpath.py
joins the two rows of a new ticket into one statement; tests/test_webhook_fastpath.py compares every parameter
with Django's own, type included.
"""

from __future__ import annotations

from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, models
from django.db.models import sql
from django.utils import timezone
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

# Shapes kept per cache and process. A row's shape is which of its fields a payload fills (and, for the store, which
# are empty), so a sender could make many; past this each new shape is worked out again every time, not kept.
CACHE_MAX = 512


def remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    """Return value, kept in cache under key while the cache holds fewer than CACHE_MAX entries."""
    if len(cache) < CACHE_MAX:
        cache[key] = value
    return value


FIELDS: dict[type, list[Any]] = {}
_COLUMNS: dict[type, list[str]] = {}  # the columns of FIELDS[model], in order
_SQL: dict[tuple[Any, ...], str] = {}  # per process; a few entries (one shape per model)


def insert(obj: Any) -> tuple[str, list[Any], list[str]]:
    """Return Django's INSERT for one instance: the SQL, its parameters and the column names, in order.

    The SQL of a row of plain values is the same every time, so it is compiled once per model and process; the
    parameters are still prepared by Django's compiler (pre_save, get_db_prep_save) for every row."""
    model = type(obj)
    fields = FIELDS.get(model)
    if fields is None:
        fields = FIELDS[model] = [f for f in model._meta.local_concrete_fields if not f.db_returning]
    # The connection itself, not django.db.connection (a proxy that looks the connection up on every attribute).
    conn = connections[DEFAULT_DB_ALIAS]
    query = sql.InsertQuery(model)
    query.insert_values(fields, [obj])
    compiler = query.get_compiler(connection=conn)
    values = [compiler.prepare_value(f, compiler.pre_save_val(f, obj)) for f in fields]
    columns = _COLUMNS.setdefault(model, [f.column for f in fields])
    if any(hasattr(v, "as_sql") for v in values):
        ((text, params),) = compiler.as_sql()  # an expression (a database default): compiled every time
        return text, list(params), columns
    key = _statement_key(model, conn, values)
    text = _SQL.get(key)
    if text is None:
        ((text, params),) = compiler.as_sql()
        if text.partition(" VALUES (")[2] != ", ".join(["%s"] * len(fields)) + ")" or len(params) != len(fields):
            return text, list(params), columns
        _SQL[key] = text
    return text, values, columns


def _statement_key(model: type, conn: Any, values: list[Any]) -> tuple[Any, ...]:
    """Return the cache key of a model's INSERT text: a field's own placeholder may depend on its value's type
    (PostgreSQL's binary one does not), so those types are part of it."""
    at = _PLACEHOLDER_AT.get(model)
    if at is None:
        at = _PLACEHOLDER_AT[model] = tuple(i for i, f in enumerate(FIELDS[model]) if hasattr(f, "get_placeholder"))
    return (model, conn.vendor, *(type(values[i]) for i in at))


_PLACEHOLDER_AT: dict[type, tuple[int, ...]] = {}


# Per (model, alias): how each field of the INSERT gets its parameter (None: not a plain model).
# Per field: the field, how its parameter is made, a prepared constant default, the types passed as they are.
_Plan = list[tuple[Any, int, Any, tuple[type, ...]]]
_PLAIN: dict[tuple[type, str], _Plan | None] = {}
_GIVEN, _CONSTANT, _CALLABLE_DEFAULT, _NOW = range(4)
# pre_save(add=True) that only reads the attribute (the date fields' without auto_now / auto_now_add).
_PLAIN_PRE_SAVE = (models.Field.pre_save, models.DateTimeField.pre_save, models.DateField.pre_save)


# Fields whose get_db_prep_save returns a value of these exact types unchanged (none of the four methods
# overridden): the webhook's row is mostly text, and calling Django's chain for each value was most of the cost of
# its parameters. (Not integers: Django adapts them to psycopg's Int4/Int8.) The test comparing them with
# Django's, type included, covers every field of both rows.
_SAME_AS_GIVEN: tuple[tuple[type, tuple[type, ...]], ...] = (
    (models.CharField, (str, type(None))),
    (models.TextField, (str, type(None))),
    (models.BooleanField, (bool, type(None))),
)
_PREP_METHODS = ("get_db_prep_save", "get_db_prep_value", "get_prep_value", "to_python")
# Callable defaults that only make an empty container (a fresh one per instance, so instances share nothing): the
# prepared parameter is only ever sent, never changed, so it is prepared once like a constant default.
_FRESH_EMPTY = (dict, list)


def _same_as_given(field: Any) -> tuple[type, ...]:
    """Return the value types field prepares as themselves (nothing when its class overrides the preparation)."""
    for base, types in _SAME_AS_GIVEN:
        if isinstance(field, base) and all(getattr(type(field), m) is getattr(base, m) for m in _PREP_METHODS):
            return types
    return ()


def _plan(model: Any, conn: Any) -> _Plan | None:
    """Return, per field of the INSERT, how its parameter is made without a model instance, or None when a field
    is not plain (its own pre_save, an auto_now other than a DateTimeField's); computed once per model and
    connection. A constant default is prepared once (Django's get_db_prep_save of the same value)."""
    key = (model, conn.alias)
    if key in _PLAIN:
        return _PLAIN[key]
    plan: _Plan = []
    for field in FIELDS.setdefault(model, [f for f in model._meta.local_concrete_fields if not f.db_returning]):
        pre_save = type(field).pre_save
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            if pre_save is not models.DateTimeField.pre_save:
                return _remember(key, None)
            plan.append((field, _NOW, None, ()))
        elif pre_save not in _PLAIN_PRE_SAVE:
            return _remember(key, None)
        elif field.has_default() and callable(field.default) and field.default not in _FRESH_EMPTY:
            plan.append((field, _CALLABLE_DEFAULT, None, _same_as_given(field)))
        else:
            constant = field.get_db_prep_save(field.get_default(), connection=conn)
            plan.append((field, _CONSTANT, constant, _same_as_given(field)))
    return _remember(key, plan)


def _remember(key: tuple[type, str], plan: _Plan | None) -> _Plan | None:
    _PLAIN[key] = plan
    return plan


def plain_params(model: type, values: dict[str, Any], conn: Any) -> list[Any] | None:
    """Return the INSERT's parameters for a row of plain values given by attname, exactly as Django's compiler
    prepares them from an instance (`Model(**values)`: defaults, pre_save, get_db_prep_save), or None when the
    row is not plain (an unknown name, an expression, a field with its own pre_save): the instance path decides.
    Building the instance and running the compiler's per-field preparation cost about 15 % of the webhook's CPU;
    tests/test_webhook_fastpath.py compares both for several rows."""
    recipe = _recipe(model, tuple(values), conn)
    if recipe is None:
        return None
    params: list[Any] = []
    now = None
    for field, attname, how, constant, same in recipe:
        if attname is not None:
            value = values[attname]
            if type(value) in same:
                params.append(value)
                continue
            if how == _NOW or hasattr(value, "resolve_expression"):
                return None
            params.append(field.get_db_prep_save(value, connection=conn))
        elif how == _CONSTANT:
            params.append(constant)
        elif how == _CALLABLE_DEFAULT:
            params.append(field.get_db_prep_save(field.get_default(), connection=conn))
        else:
            if now is None:
                now = timezone.now()
            # DateTimeField.pre_save(add=True) with auto_now / auto_now_add: timezone.now() (one per field there).
            params.append(field.get_db_prep_save(now, connection=conn))
    return params


# Per (model, alias, names given): the plan of each field with its attname when the row gives it (None: the field
# takes its default). Worked out once per shape of row, not for every webhook.
_Recipe = tuple[tuple[Any, str | None, int, Any, tuple[type, ...]], ...]
_RECIPES: dict[tuple[type, str, tuple[str, ...]], _Recipe | None] = {}


def _recipe(model: type, names: tuple[str, ...], conn: Any) -> _Recipe | None:
    key = (model, conn.alias, names)
    if key in _RECIPES:
        return _RECIPES[key]
    plan = _plan(model, conn)
    recipe: _Recipe | None = None
    if plan is not None and set(names) <= {field.attname for field, *_ in plan}:
        recipe = tuple(
            (field, field.attname if field.attname in names else None, how, constant, same)
            for field, how, constant, same in plan
        )
    return remember(_RECIPES, key, recipe)


def defaulted(model: type, names: tuple[str, ...], conn: Any) -> tuple[bool, ...]:
    """Return, per parameter of the model's INSERT, whether it is a constant default when the names are given
    (the same value on every row of this shape) that the statement can carry as a literal."""
    key = (model, conn.alias, names)
    mask = _DEFAULTED.get(key)
    if mask is None:
        plan = _plan(model, conn)
        mask = (
            tuple(how == _CONSTANT and f.attname not in names and inlinable(c) for f, how, c, _ in plan) if plan else ()
        )
        remember(_DEFAULTED, key, mask)
    return mask


_DEFAULTED: dict[tuple[type, str, tuple[str, ...]], tuple[bool, ...]] = {}


def plain_insert(model: type, values: dict[str, Any], conn: Any) -> tuple[str, list[Any], list[str]]:
    """Return (SQL, parameters, columns) of the INSERT of one row given by attname, like insert(model(**values))
    but without the instance when the row is plain; the SQL is still Django's (compiled once per shape)."""
    params = plain_params(model, values, conn)
    if params is None:
        return insert(model(**values))
    text = _SQL.get(_statement_key(model, conn, params))
    if text is None:
        return insert(model(**values))  # compiles and caches the SQL for this shape
    return text, params, _COLUMNS[model]


def inlinable(value: Any) -> bool:
    if isinstance(value, bool | int):
        return True
    if isinstance(value, str):
        return "\\" not in value
    return isinstance(value, Jsonb) and "\\" not in literal(value)


def literal(value: Any) -> str:
    return pgsql.Literal(value).as_string(None)
