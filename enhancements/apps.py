from django.apps import AppConfig


class EnhancementsConfig(AppConfig):
    """The enhancement pipeline."""

    name = "enhancements"
    verbose_name = "Enhancements"

    def ready(self) -> None:
        """Register the triage admin pages, harden every admin change list (all are registered by now), and turn
        every qcluster worker process into a threaded pipeline worker as it starts."""
        from django_q.signals import post_spawn

        from enhancements import runner
        from enhancements.triage import admin  # noqa: F401
        from project import adminlists

        adminlists.install()
        post_spawn.connect(runner.start_worker, dispatch_uid="enhancements-runner")
