import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from webapp.annotation.importers import demo_prompts_from_vader_sdist
from webapp.annotation.services import prompts_create
from webapp.errors import ApplicationError
from webapp.policies import services
from webapp.policies.models import Membership, Project
from webapp.training.services import schedule_ensure

DEMO_USERS = [("admin", True), ("annotator1", False), ("annotator2", False)]
VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"


class Command(BaseCommand):
    help = (
        "Set up the demo: the SmolLM2 base model as version 0 of project 'demo', the VADER movie-review "
        "prompts, an admin and two annotators (members of the project), and the beat schedule. Safe to run again."
    )

    def add_arguments(self, parser):
        parser.add_argument("--base-model", help="a local Hugging Face causal-LM folder instead of SmolLM2")
        parser.add_argument("--tiny", action="store_true", help="a tiny random model (for quick trials, not learning)")
        parser.add_argument("--vader-sdist", help=f"path to {VADER_SDIST} (default: the data dir's downloads/)")

    def handle(self, *args, base_model=None, tiny=False, vader_sdist=None, **options):
        try:
            self._bootstrap(base_model, tiny, vader_sdist)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc

    def _bootstrap(self, base_model, tiny, vader_sdist):
        project = Project.objects.filter(slug="demo").first()
        if project is None:
            if tiny:
                from pgcore.tiny import write_tiny_model

                path = Path(settings.REWARDLOOP_MODELS_DIR) / "tiny-random"
                if not (path / "config.json").exists():
                    write_tiny_model(path)
            elif base_model:
                path = Path(base_model)
            else:
                self.stdout.write("Preparing SmolLM2-135M-Instruct (first run only, about 20 s)…")
                path = services.base_model_ensure()
            project = services.project_create(
                slug="demo",
                title="Movie-review continuations",
                base_model_path=path,
                guidelines=(
                    "The model was asked to continue the start of a real movie review. Rate the continuation:\n"
                    "5 = a fluent, on-topic continuation of the review that reads warmly and upbeat; "
                    "3 = readable but flat or partly off-topic; 1 = off-topic, broken or unpleasant."
                ),
            )
            self.stdout.write(f"Created project 'demo' with {path} as version 0.")
        if not project.prompts.exists():
            sdist = Path(vader_sdist or Path(settings.DATA_DIR) / "downloads" / VADER_SDIST)
            result = prompts_create(project=project, rows=demo_prompts_from_vader_sdist(sdist))
            self.stdout.write(f"Imported {result.created} demo prompts (VADER movie-review snippets).")
        password = os.environ.get("DEMO_PASSWORD")
        User = get_user_model()
        for username, staff in DEMO_USERS:
            user = User.objects.filter(username=username).first()
            if user and not password:
                self.stdout.write(f"  {username}: exists (password unchanged)")
                continue
            chosen = password or secrets.token_urlsafe(9)
            if user is None:
                user = User(username=username, is_staff=staff, is_superuser=staff)
            user.set_password(chosen)
            user.save()
            self.stdout.write(f"  {username}: password {chosen}{' (staff)' if staff else ''}")
        for username, staff in DEMO_USERS:
            user = User.objects.get(username=username)
            if not Membership.objects.filter(project=project, user=user).exists():
                role = Membership.Role.STAFF if staff else Membership.Role.ANNOTATOR
                services.membership_add(project=project, user=user, role=role)
                self.stdout.write(f"  {username}: member of 'demo' as {role}")
        interval = os.environ.get("REWARDLOOP_TRAIN_INTERVAL_S")
        schedule_ensure(train_interval_s=int(interval) if interval else None)
        # Start filling the pool as soon as a generation worker is up, not at beat's first tick.
        from webapp.annotation.tasks import pool_refill

        pool_refill.delay(project.pk)
        # Version 0's held-out evaluation runs on the training worker meanwhile, so the first
        # training run finds its parent measured (webapp.training.signals).
        from webapp.training.signals import version_evaluate_send

        version_evaluate_send(project_id=project.pk)
        self.stdout.write(self.style.SUCCESS("Demo ready."))
