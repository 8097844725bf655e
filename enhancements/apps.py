from django.apps import AppConfig


class EnhancementsConfig(AppConfig):
    """The enhancement pipeline."""

    name = "enhancements"
    verbose_name = "Enhancements"
