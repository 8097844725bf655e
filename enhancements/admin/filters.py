"""List filters of the enhancement changelist."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest

from enhancements.models import Feedback
from tickets.language import NAMES


class RatingFilter(admin.SimpleListFilter):
    """Filter by the feedback an enhancement received."""

    title = "rating"
    parameter_name = "rating"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        """Return the filter choices."""
        return [*Feedback.Rating.choices, ("none", "Not rated")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        """Return the rows with that rating."""
        value = self.value()
        if value == "none":
            return queryset.filter(~Exists(Feedback.objects.filter(enhancement=OuterRef("pk"))))
        if value in Feedback.Rating.values:
            return queryset.filter(Exists(Feedback.objects.filter(enhancement=OuterRef("pk"), rating=value)))
        return None


class ProviderFilter(admin.SimpleListFilter):
    """Filter by LLM provider, from a fixed list (a DISTINCT over a big table would be slow)."""

    title = "provider"
    parameter_name = "provider"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        """Return the filter choices."""
        return [
            ("openai", "OpenAI-compatible"),
            ("offline", "Offline"),
            ("budget", "Offline: AI budget reached"),
            ("none", "None yet"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        """Return the rows of that provider."""
        if self.value() == "none":
            return queryset.filter(provider="")
        if self.value() == "budget":
            return queryset.filter(over_budget=True)
        return queryset.filter(provider=self.value()) if self.value() else None


class LanguageFilter(admin.SimpleListFilter):
    """Filter by the ticket's detected language, from the names the note uses (no DISTINCT over the tickets)."""

    title = "ticket language"
    parameter_name = "language"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        """Return the filter choices."""
        return [*NAMES.items(), ("none", "Not detected")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        """Return the rows whose ticket is in that language."""
        if self.value() == "none":
            return queryset.filter(ticket__language="")
        return queryset.filter(ticket__language=self.value()) if self.value() else None
