"""Per-user API tokens.

A token is ``rl_`` followed by 43 random URL-safe characters (256 bits from
:mod:`secrets`). Only its sha256 is stored: the secret is shown once, in the
answer that creates it (never cached, never kept in the session), and cannot
be read back. A token acts as its user, with that user's role in each project
(``policies.Membership``), no more; a revoked token, or one whose user is
inactive, opens nothing.
"""

from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField("name", max_length=100, help_text="What the token is for, e.g. 'labelling script'.")
    prefix = models.CharField(
        "prefix", max_length=16, help_text="The token's first characters, to recognise it in lists (not secret)."
    )
    key_sha256 = models.CharField("sha256 of the token", max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField("created", auto_now_add=True)
    last_used_at = models.DateTimeField("last used", null=True, blank=True, help_text="Updated at most once a minute.")
    revoked_at = models.DateTimeField("revoked", null=True, blank=True, help_text="A revoked token opens nothing.")
    form_nonce = models.CharField(
        "form nonce", max_length=64, null=True, blank=True, editable=False,
        help_text="The one-time nonce of the tokens page's form that created it (not secret; empty for the command):"
        " the same form posted twice creates one token. Unique per user.",
    )  # fmt: skip

    class Meta:
        verbose_name = "API token"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "revoked_at"], name="apitoken_user_active")]
        # Per user, not across users: the create service looks the nonce up among the user's own tokens,
        # and a global index would tell another user (by a 500) that someone's token stores their nonce.
        constraints = [models.UniqueConstraint(fields=["user", "form_nonce"], name="apitoken_user_form_nonce_unique")]

    def __str__(self):
        return f"API token {self.prefix}… of {self.user_id} ({self.name})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
