"""Schedule triage's sweep (every minute) and the SDP list refresh (every six hours); give the roles triage."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from enhancements.roles import roles_sync

SCHEDULES = {
    "triage-sweep": {"func": "enhancements.triage.tasks.sweep", "minutes": 1},
    "triage-refresh-sdp-lists": {"func": "enhancements.triage.tasks.refresh_choices", "minutes": 360},
}


def create_schedules(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    for name, values in SCHEDULES.items():
        Schedule.objects.update_or_create(name=name, defaults={**values, "schedule_type": "I", "repeats": -1})


def sync_roles(apps, schema_editor):
    # The triage models' permissions are created after migrate on a fresh database: create them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    roles_sync(apps=apps)


def remove_schedules(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name__in=list(SCHEDULES)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("enhancements", "0009_triage"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(create_schedules, remove_schedules),
        migrations.RunPython(sync_roles, migrations.RunPython.noop),
    ]
