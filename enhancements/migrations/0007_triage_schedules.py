"""Schedule triage's sweep (every minute) and the refresh of the tenants' SDP lists (every six hours)."""

from django.db import migrations

SCHEDULES = {
    "triage-sweep": {"func": "enhancements.triage.tasks.sweep", "minutes": 1},
    "triage-refresh-sdp-lists": {"func": "enhancements.triage.tasks.refresh_choices", "minutes": 360},
}


def create_schedules(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    for name, values in SCHEDULES.items():
        Schedule.objects.update_or_create(name=name, defaults={**values, "schedule_type": "I", "repeats": -1})


def remove_schedules(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name__in=list(SCHEDULES)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("enhancements", "0006_triage"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_schedules, remove_schedules)]
