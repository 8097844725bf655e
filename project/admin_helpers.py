"""Admin building blocks shared by the apps: a bounded-count paginator, the show-a-secret-once page, the user."""

from __future__ import annotations

from typing import cast

from django.contrib import admin
from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.functional import cached_property


class CappedCountPaginator(Paginator):
    """Count at most CAP rows, so the changelist of a big table never runs an unbounded COUNT."""

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        """Return the number of rows, at most CAP + 1 (shown as "more than CAP")."""
        # Only primary keys: annotations the list shows (e.g. a latest rating) are not computed to count.
        queryset = cast(QuerySet, self.object_list)  # the admin paginates querysets only
        return queryset.order_by().values("pk")[: self.CAP + 1].count()

    @property
    def capped(self) -> bool:
        """Return whether there are more rows than were counted."""
        return self.count > self.CAP


def secret_once_response(
    request: HttpRequest,
    site: admin.AdminSite,
    *,
    title: str,
    secrets: list[tuple[str, str]],
    notes: list[str],
    back_url: str,
) -> HttpResponse:
    """Render a page that shows new secrets once and is never cached (not a message kept in a cookie)."""
    response = TemplateResponse(
        request,
        "admin/secret_once.html",
        {**site.each_context(request), "title": title, "secrets": secrets, "notes": notes, "back_url": back_url},
    )
    response["Cache-Control"] = "no-store"
    return response


def acting_user(request: HttpRequest) -> User | None:
    """Return the signed-in user making an admin request (admin views let no anonymous user in)."""
    return request.user if isinstance(request.user, User) else None
