"""The admin roles (groups) and the custom review permissions, kept in one place."""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps

SUPPORT_LEAD = "Support lead"
OPERATOR = "Operator"

# Custom permissions on Enhancement beyond Django's add/change/delete/view.
CUSTOM_PERMISSIONS = {
    "approve_enhancement": "Can approve, post and reject enhancements",
    "rerun_enhancement": "Can re-run and re-post enhancements",
}

# "app_label.codename" per group. Tenant secrets need change_tenant, which support leads lack.
ROLES: dict[str, list[str]] = {
    SUPPORT_LEAD: [
        "tickets.view_tenant",
        "tickets.view_ticket",
        "tickets.view_asset",
        "tickets.view_knowledgearticle",
        "enhancements.view_enhancement",
        "enhancements.change_enhancement",
        "enhancements.approve_enhancement",
        "enhancements.rerun_enhancement",
        "enhancements.view_feedback",
        "enhancements.add_feedback",
        "clusters.view_outagecluster",
        "clusters.change_outagecluster",
        # Triage: a lead sets modes and thresholds, describes groups, and undoes writes.
        *(f"enhancements.{action}_{model}" for model in ("triagesetting", "sdpchoice", "triagedecision")
          for action in ("view", "change")),
        "enhancements.view_ticketupdate",
    ],
    OPERATOR: [
        *(f"tickets.{action}_{model}" for model in ("tenant", "ticket", "asset", "knowledgearticle")
          for action in ("add", "change", "delete", "view")),
        *(f"enhancements.{action}_apitoken" for action in ("add", "change", "delete", "view")),
        "enhancements.view_enhancement",
        "enhancements.view_feedback",
        *(f"enhancements.view_{model}" for model in ("triagesetting", "sdpchoice", "triagedecision")),
        "enhancements.view_ticketupdate",
        "django_q.view_schedule",
        "django_q.view_success",
        "django_q.view_failure",
        "django_q.view_ormq",
    ],
}  # fmt: skip


def roles_sync(*, apps: Any = global_apps) -> None:
    """Create the custom permissions and set each group's permissions to exactly ROLES."""
    content_type_model = apps.get_model("contenttypes", "ContentType")
    permission_model = apps.get_model("auth", "Permission")
    group_model = apps.get_model("auth", "Group")
    enhancement_type, _ = content_type_model.objects.get_or_create(app_label="enhancements", model="enhancement")
    for codename, name in CUSTOM_PERMISSIONS.items():
        permission_model.objects.update_or_create(
            content_type=enhancement_type, codename=codename, defaults={"name": name}
        )
    for group_name, dotted in ROLES.items():
        permissions = []
        for item in dotted:
            app_label, codename = item.split(".", 1)
            try:
                apps.get_model(app_label, codename.split("_", 1)[1])
            except LookupError:
                continue  # a model a later migration adds; that migration syncs the roles again
            # get(), not filter(): a renamed model must fail the migration loudly, not drop a permission.
            permissions.append(permission_model.objects.get(content_type__app_label=app_label, codename=codename))
        group, _ = group_model.objects.get_or_create(name=group_name)
        group.permissions.set(permissions)
