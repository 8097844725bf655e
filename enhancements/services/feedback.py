"""Ratings of enhancements by support leads, technicians and API tokens."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from enhancements.models import ApiToken, Enhancement, Feedback


def feedback_create(
    *,
    enhancement_id: str,
    rating: str,
    comment: str = "",
    user: User | None = None,
    technician_email: str = "",
    api_token: ApiToken | None = None,
) -> Feedback:
    """Record a rating; a second rating by the same rater (user, or token and technician) replaces the first."""
    if rating not in Feedback.Rating.values:
        raise ValueError(f"rating must be one of {', '.join(Feedback.Rating.values)}")
    enhancement = Enhancement.objects.get(pk=enhancement_id)
    values = {"rating": rating, "comment": comment.strip()}
    if api_token is not None:
        # A token rates once per enhancement for each technician it names (or once for no one).
        try:
            with transaction.atomic():
                feedback, _ = Feedback.objects.update_or_create(
                    enhancement=enhancement,
                    api_token=api_token,
                    technician_email=technician_email.lower(),
                    defaults={**values, "user": None},
                )
        except IntegrityError:  # two concurrent first ratings: the other one won, update it
            feedback = Feedback.objects.get(
                enhancement=enhancement, api_token=api_token, technician_email=technician_email.lower()
            )
            Feedback.objects.filter(pk=feedback.pk).update(**values)
            feedback.refresh_from_db()
        return feedback
    if user is not None:
        feedback, _ = Feedback.objects.update_or_create(
            enhancement=enhancement, user=user, defaults={**values, "technician_email": technician_email}
        )
    elif technician_email:
        feedback, _ = Feedback.objects.update_or_create(
            enhancement=enhancement, user=None, technician_email=technician_email.lower(), defaults=values
        )
    else:
        feedback = Feedback.objects.create(enhancement=enhancement, **values)
    return feedback
