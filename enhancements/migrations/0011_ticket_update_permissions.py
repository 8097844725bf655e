"""Let support leads and operators see ticket updates (enhancements.roles lists the permissions)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from enhancements.roles import roles_sync


def sync_roles(apps, schema_editor):
    # Django creates model permissions after migrate; on a fresh database they do not exist yet.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    roles_sync(apps=apps)


class Migration(migrations.Migration):
    dependencies = [
        ("enhancements", "0010_triage_schedules"),
        ("clusters", "0002_support_lead_permissions"),
    ]

    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]
