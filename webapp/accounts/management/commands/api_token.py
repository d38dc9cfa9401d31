from django.core.management.base import BaseCommand, CommandError

from webapp.accounts import selectors, services
from webapp.accounts.models import ApiToken
from webapp.errors import ApplicationError
from webapp.policies.selectors import user_called


class Command(BaseCommand):
    help = (
        "Create, list or revoke a user's API tokens. 'create' prints the secret once: "
        "it is stored only as a sha256 and cannot be shown again."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create a token and print its secret")
        create.add_argument("username")
        create.add_argument("--name", required=True, help="what the token is for")
        listing = sub.add_parser("list", help="list a user's tokens (never their secrets)")
        listing.add_argument("username")
        revoke = sub.add_parser("revoke", help="revoke a token by its id")
        revoke.add_argument("token_id", type=int)

    def _user(self, username):
        try:
            return user_called(username=username)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc

    def handle(self, *args, action, **options):
        if action == "create":
            try:
                token, secret = services.api_token_create(user=self._user(options["username"]), name=options["name"])
            except ApplicationError as exc:
                raise CommandError(exc.message) from exc
            self.stderr.write(f"Token {token.pk} ({token.name}) created; this is the only time its secret is shown:")
            self.stdout.write(secret)
        elif action == "list":
            for token in selectors.api_tokens_for(user=self._user(options["username"])):
                state = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "active"
                used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
                self.stdout.write(f"{token.pk}\t{token.prefix}…\t{token.name}\t{state}\tlast used {used}")
        else:
            token = ApiToken.objects.filter(pk=options["token_id"]).first()
            if token is None:
                raise CommandError(f"No token {options['token_id']}.")
            services.api_token_revoke(token=token)
            self.stdout.write(self.style.SUCCESS(f"Token {token.pk} ({token.prefix}…) revoked."))
