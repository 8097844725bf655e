from django.apps import AppConfig


class EnhancementsConfig(AppConfig):
    """The enhancement pipeline."""

    name = "enhancements"
    verbose_name = "Enhancements"

    def ready(self) -> None:
        """Register the triage admin pages, then harden every admin change list (all are registered by now)."""
        from enhancements.triage import admin  # noqa: F401
        from project import adminlists

        adminlists.install()
