"""Django admin of the enhancement side: one module per ModelAdmin, HTML helpers in `display`.

Importing the package registers the admins (Django's autodiscover imports `enhancements.admin`).
"""

from enhancements.admin.enhancement import EnhancementAdmin
from enhancements.admin.feedback import FeedbackAdmin
from enhancements.admin.tokens import ApiTokenAdmin
from enhancements.admin.updates import TicketUpdateAdmin

__all__ = ["ApiTokenAdmin", "EnhancementAdmin", "FeedbackAdmin", "TicketUpdateAdmin"]
