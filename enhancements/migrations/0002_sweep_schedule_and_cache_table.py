"""Create the every-minute sweep schedule (idempotently) and the database cache table."""

from django.core.management import call_command
from django.db import migrations


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="enhancements-sweep",
        defaults={
            "func": "enhancements.tasks.sweep",
            "schedule_type": "I",
            "minutes": 1,
            "repeats": -1,
        },
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="enhancements-sweep").delete()


def create_cache_table(apps, schema_editor):
    # Without REDIS_URL the cache is a database table; createcachetable skips existing tables.
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):
    dependencies = [
        ("enhancements", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [
        migrations.RunPython(create_schedule, remove_schedule),
        migrations.RunPython(create_cache_table, migrations.RunPython.noop),
    ]
