from django.core.management.base import BaseCommand, CommandError

from webapp.errors import ApplicationError
from webapp.policies.models import Membership, Project
from webapp.policies.selectors import user_called
from webapp.policies.services import membership_add, membership_remove


class Command(BaseCommand):
    help = "Add a user to a project as annotator or staff (or change their role), or remove them with --remove."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("username")
        parser.add_argument("--role", choices=Membership.Role.values, default=Membership.Role.ANNOTATOR)
        parser.add_argument("--remove", action="store_true", help="take the user off the project")

    def handle(self, *args, slug, username, role, remove, **options):
        project = Project.objects.filter(slug=slug).first()
        if project is None:
            raise CommandError(f"No project {slug!r}.")
        try:
            user = user_called(username=username)
            if remove:
                was = membership_remove(project=project, user=user)
                self.stdout.write(f"{username} removed from {slug}." if was else f"{username} was not a member of {slug}.")
                return
            membership_add(project=project, user=user, role=role)
        except ApplicationError as exc:  # nobody is called so; the project's last staff member: make someone else staff first
            raise CommandError(exc.message) from exc
        self.stdout.write(self.style.SUCCESS(f"{username} is {role} of {slug}."))
