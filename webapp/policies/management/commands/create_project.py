from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from webapp.errors import ApplicationError
from webapp.policies.models import RatingMode
from webapp.policies.models import Membership
from webapp.policies.selectors import user_called
from webapp.policies.services import membership_add, project_create


class Command(BaseCommand):
    help = "Create a project on any local Hugging Face causal-LM folder; the folder becomes version 0, served."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("base_model", help="local folder with config.json and weights (nothing is downloaded)")
        parser.add_argument("--title", default="")
        parser.add_argument("--rating-mode", choices=RatingMode.values, default=RatingMode.LIKERT)
        parser.add_argument("--ratings-per-item", type=int, default=1)
        parser.add_argument("--min-new-ratings", type=int, default=16)
        parser.add_argument(
            "--annotators", default="", help="comma-separated usernames to add as the project's annotators"
        )
        parser.add_argument("--staff", default="", help="comma-separated usernames to add as the project's staff")

    def handle(
        self, *args, slug, base_model, title, rating_mode, ratings_per_item, min_new_ratings, annotators, staff, **options
    ):
        members = [(name, Membership.Role.ANNOTATOR) for name in annotators.split(",") if name.strip()]
        members += [(name, Membership.Role.STAFF) for name in staff.split(",") if name.strip()]
        users, unknown = {}, []
        for name in sorted({name.strip() for name, _ in members}):
            try:
                users[name] = user_called(username=name)
            except ApplicationError as exc:  # every unknown name at once
                unknown.append(exc.message)
        if unknown:
            raise CommandError(" ".join(unknown))
        try:
            with transaction.atomic():
                project = project_create(
                    slug=slug,
                    title=title or slug,
                    base_model_path=base_model,
                    rating_mode=rating_mode,
                    ratings_per_item=ratings_per_item,
                    min_new_ratings=min_new_ratings,
                )
                for name, role in members:
                    membership_add(project=project, user=users[name.strip()], role=role)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        except Exception as exc:  # full_clean's ValidationError
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"Created project {project.slug}; import prompts with: manage.py import_prompts {slug} FILE"))

