from django.core.management.base import BaseCommand, CommandError

from webapp.errors import ApplicationError
from webapp.policies import services
from webapp.policies.models import ModelVersion, Project


class Command(BaseCommand):
    help = (
        "Write a model version as a Hugging Face model folder (LoRA merged) that "
        "AutoModelForCausalLM.from_pretrained loads."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("version", type=int, help="version number (0 is the base model)")
        parser.add_argument("outdir", help="folder to create (must not exist)")

    def handle(self, *args, project, version, outdir, **options):
        try:
            target = ModelVersion.objects.select_related("project").get(project__slug=project, number=version)
        except ModelVersion.DoesNotExist:
            if not Project.objects.filter(slug=project).exists():
                raise CommandError(f"No project named {project!r}.") from None
            raise CommandError(f"Project {project!r} has no version {version}.") from None
        try:
            path = services.version_export_hf(version=target, out_dir=outdir)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(self.style.SUCCESS(f"Wrote {project} v{version} to {path}"))
