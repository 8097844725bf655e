from django.apps import AppConfig


class EnhancementsConfig(AppConfig):
    """The enhancement pipeline."""

    name = "enhancements"
    verbose_name = "Enhancements"

    def ready(self) -> None:
        """Register the triage admin pages (their own module, next to the triage code)."""
        from enhancements.triage import admin  # noqa: F401
