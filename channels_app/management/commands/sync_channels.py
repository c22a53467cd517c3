"""``python manage.py sync_channels``: write the YAML file's channels into the registry."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from channels_app.config import ConfigError, load_config
from channels_app.registry.sync import SyncConflict, channels_sync


class Command(BaseCommand):
    help = (
        "Create or update the channels declared in the YAML configuration (by id, in one "
        "transaction). Channels created through the API or admin are never touched."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--config",
            help="YAML file or folder holding config.yaml (default: CONFIG_FOLDER_PATH, "
            "else configs/memory.config.yaml).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Show what would change; write nothing.")
        parser.add_argument(
            "--prune",
            action="store_true",
            help="Deactivate channels that came from YAML and are no longer in the file.",
        )

    def handle(self, *args, config=None, dry_run=False, prune=False, **options):
        """Load the file (``--config``, else the one the settings loaded), sync it and print the report."""
        if config is None:
            realtime_config = settings.REALTIME
        else:
            try:
                realtime_config = load_config(config, base_dir=settings.BASE_DIR)
            except ConfigError as error:
                # Status 2, like a bad CONFIG_FOLDER_PATH file at startup.
                raise CommandError(str(error), returncode=2) from error
        try:
            report = channels_sync(config=realtime_config, prune=prune, dry_run=dry_run)
        except SyncConflict as error:
            raise CommandError(f"{realtime_config.path}: {error}") from error
        prefix = "would be " if dry_run else ""
        for label, names, style in (
            ("created", report.created, self.style.SUCCESS),
            ("updated", report.updated, self.style.WARNING),
            ("unchanged", report.unchanged, str),
            ("deactivated", report.deactivated, self.style.WARNING),
        ):
            for name in names:
                self.stdout.write(style(f"{prefix}{label}: {name}"))
        summary = (
            f"{realtime_config.path}: {len(report.created)} {prefix}created, "
            f"{len(report.updated)} {prefix}updated, {len(report.unchanged)} unchanged, "
            f"{len(report.deactivated)} {prefix}deactivated"
        )
        self.stdout.write(summary + (" (dry run: nothing written)" if dry_run else ""))
