"""Admin change lists that answer impossible filter values with Django's "invalid lookup" page, never a 500.

Django's date hierarchy computes the next day, month or year of the filtered date in Python: for 9999-12-31
that overflows (OverflowError, or ValueError for year 10000), outside the try that turns a bad lookup into
its `?e=1` redirect. Values that reach the database can fail there too (a year beyond 9999 when adapted, an
out-of-range number on PostgreSQL). Every registered admin gets a change list that treats those like any
other wrong lookup.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.db import DataError

_BAD_VALUE = (ValueError, OverflowError, TypeError, DataError)


class _SafeChangeList:
    """Mixed in front of a ChangeList class: bad filter values become IncorrectLookupParameters."""

    def get_filters(self, request: Any) -> Any:
        try:
            return super().get_filters(request)  # type: ignore[misc]
        except _BAD_VALUE as exc:
            raise IncorrectLookupParameters(exc) from exc

    def get_results(self, request: Any) -> Any:
        try:
            return super().get_results(request)  # type: ignore[misc]
        except _BAD_VALUE as exc:
            raise IncorrectLookupParameters(exc) from exc


def _safe(cls: type[ChangeList]) -> type[ChangeList]:
    if issubclass(cls, _SafeChangeList):
        return cls
    return type(f"Safe{cls.__name__}", (_SafeChangeList, cls), {})


def install(site: admin.AdminSite = admin.site) -> None:
    """Give every model admin registered on site (ours and third-party ones) the safe change list."""
    for model_admin in site._registry.values():
        original = model_admin.get_changelist

        def get_changelist(request: Any, _original: Any = original, **kwargs: Any) -> type[ChangeList]:
            return _safe(_original(request, **kwargs))

        model_admin.get_changelist = get_changelist  # type: ignore[method-assign]
