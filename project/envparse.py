"""Parsers for settings whose environment value has a structure (project/settings.py reads the environment)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.exceptions import ImproperlyConfigured


def llm_prices(raw: str) -> dict[str, tuple[Decimal, Decimal]]:
    """Return {model: (prompt, completion) price per million tokens} of "model=in:out,..."; raise when malformed."""
    prices: dict[str, tuple[Decimal, Decimal]] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        model, _, pair = item.rpartition("=")
        given, _, taken = pair.partition(":")
        try:
            price = (Decimal(given), Decimal(taken))
        except InvalidOperation:
            price = (Decimal(-1), Decimal(-1))
        if not model.strip() or not all(p.is_finite() and p >= 0 for p in price):
            raise ImproperlyConfigured(
                f"LLM_PRICES: {item!r} is not model=input_per_1M:output_per_1M (e.g. gpt-4o-mini=0.15:0.60)"
            )
        prices[model.strip()] = price
    return prices


def not_negative(name: str, value: int | str, zero: str = "unlimited") -> Decimal:
    """Return the value as a Decimal; raise when it is not a number or is negative (0 = `zero`)."""
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        number = Decimal(-1)
    if not (number.is_finite() and number >= 0):
        raise ImproperlyConfigured(f"{name} must be a number that is not negative (0 = {zero}), not {value!r}")
    return number


def time_zone(name: str, value: str) -> str:
    """Return the IANA time zone name; raise when it is unknown."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        message = f"{name} must be an IANA time zone (e.g. UTC, Europe/Berlin), not {value!r}"
        raise ImproperlyConfigured(message) from None
    return value
