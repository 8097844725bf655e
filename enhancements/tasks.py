"""Django-Q entry points: they take ids only and call a service."""

from __future__ import annotations

from enhancements import services


def process_enhancement(enhancement_id: str) -> str:
    """Run one attempt of the pipeline for the enhancement; return its resulting status."""
    return services.enhancement_process(enhancement_id=enhancement_id)


def sweep() -> dict[str, int]:
    """Re-enqueue due, lost or stuck enhancements."""
    return services.enhancement_sweep()
