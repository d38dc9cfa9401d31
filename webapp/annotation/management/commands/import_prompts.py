from django.core.management.base import BaseCommand, CommandError

from webapp.annotation import services
from webapp.errors import ApplicationError
from webapp.policies.models import Project


class Command(BaseCommand):
    help = "Import prompts into a project from a JSONL or CSV file, whole or not at all."

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("file", help=".jsonl (one {\"text\": ...} per line) or .csv (a 'text' column; 'prompt' where there is no 'text')")

    def handle(self, *args, project, file, **options):
        try:
            target = Project.objects.get(slug=project)
        except Project.DoesNotExist:
            raise CommandError(f"No project named {project!r}.") from None
        try:
            result = services.prompts_import(project=target, path=file)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(
            self.style.SUCCESS(f"Imported {result.created} prompts into {project}")
            + (f" ({result.duplicates} already there, skipped)" if result.duplicates else "")
            + f". {result.fields_read_sentence()}"
        )
