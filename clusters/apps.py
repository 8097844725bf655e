from django.apps import AppConfig


class ClustersConfig(AppConfig):
    """Outage clusters: new tickets of one tenant that look like the same problem."""

    name = "clusters"
    verbose_name = "Outage clusters"
