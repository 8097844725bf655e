"""Create the Support lead and Operator groups with the custom review permissions."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from enhancements.roles import roles_sync


def create_groups(apps, schema_editor):
    # Django creates model permissions after migrate; on a fresh database they do not exist yet.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    roles_sync(apps=apps)


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=["Support lead", "Operator"]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("enhancements", "0003_api_token"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
