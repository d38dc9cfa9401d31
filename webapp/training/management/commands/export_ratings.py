from django.core.management.base import BaseCommand, CommandError

from webapp.errors import ApplicationError
from webapp.policies.models import Project
from webapp.training import exports


class Command(BaseCommand):
    help = (
        "Export a project's ratings as TRL-ready JSONL: --format kto (prompt, completion, label) "
        "or --format pairs (prompt, chosen, rejected). "
        "Refuses, writing nothing, when there is nothing to export yet."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("outfile", help="JSONL file to write")
        parser.add_argument("--format", dest="fmt", choices=exports.FORMATS, required=True)

    def handle(self, *args, project, outfile, fmt, **options):
        try:
            target = Project.objects.get(slug=project)
        except Project.DoesNotExist:
            raise CommandError(f"No project named {project!r}.") from None
        try:
            _, n = exports.ratings_export(project=target, fmt=fmt, out_file=outfile, refuse_empty=True)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(self.style.SUCCESS(f"Wrote {n} {fmt} rows to {outfile}"))
