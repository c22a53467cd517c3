from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("channels_app", "0003_payload_format"),
    ]

    operations = [
        migrations.AddField(
            model_name="channel",
            name="presence",
            field=models.BooleanField(
                default=False,
                help_text="Track who is connected, and tell subscribers when people join and leave.",
            ),
        ),
    ]
