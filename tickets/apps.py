from django.apps import AppConfig


class TicketsConfig(AppConfig):
    """The ServiceDesk side of the product."""

    name = "tickets"
    verbose_name = "ServiceDesk"
