"""Remove what `rest_framework.authtoken` left behind: it was installed but never used (our API tokens are
enhancements.ApiToken), and its "Tokens" admin page sat beside the real one.

Safe on every database: a fresh one never had the table; an existing one loses an empty-by-design table, the
app's migration records, and its content types and permissions. Reversing does nothing (re-adding the app to
INSTALLED_APPS and migrating recreates them).
"""

from django.db import migrations


def _drop_authtoken(apps, schema_editor):
    connection = schema_editor.connection
    if "authtoken_token" in connection.introspection.table_names():
        schema_editor.execute("DROP TABLE authtoken_token")
    schema_editor.execute("DELETE FROM django_migrations WHERE app = 'authtoken'")
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.using(connection.alias).filter(app_label="authtoken").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("enhancements", "0013_enhancement_heartbeat"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(_drop_authtoken, migrations.RunPython.noop)]
