"""The SECRET_KEY: from ``DJANGO_SECRET_KEY``, else generated once into the data directory.

Imported by ``settings.py`` before Django is set up, so it uses nothing of Django's
but its exception type.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

# The value settings.py used to fall back to; refused in production like any weak key.
OLD_DEV_KEY = "dev-only-not-secret-change-me-in-production"
KEY_FILE_NAME = "secret_key"
# What Django's `check --deploy` (security.W009) calls weak: fewer than 50 characters, fewer
# than 5 distinct ones, or Django's generated development prefix.
MIN_LENGTH = 50
MIN_UNIQUE_CHARACTERS = 5
INSECURE_PREFIX = "django-insecure-"


def is_weak(key: str) -> bool:
    """Whether ``key`` is one Django's deploy check would warn about, or the old development value."""
    return (
        key == OLD_DEV_KEY
        or key.startswith(INSECURE_PREFIX)
        or len(key) < MIN_LENGTH
        or len(set(key)) < MIN_UNIQUE_CHARACTERS
    )


def key_file_read_or_create(path: Path) -> str:
    """The key stored at ``path``; on first use a new random one (67 URL-safe characters), mode 0600.

    Safe when several processes start at once: the key is written to a private
    temporary file and linked into place, so every process reads the same
    complete key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(50))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # fails if another process was first; its key wins
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    key = path.read_text().strip()
    if is_weak(key):
        raise ImproperlyConfigured(f"{path} holds a weak secret key; delete the file to have a new one generated.")
    return key


def secret_key(*, environ, data_dir: Path, debug: bool) -> str:
    """``DJANGO_SECRET_KEY`` if set, else the key file under ``data_dir``.

    Raises:
        ImproperlyConfigured: with DEBUG off, ``DJANGO_SECRET_KEY`` is the old
            development value or weak (see :func:`is_weak`).
    """
    key = environ.get("DJANGO_SECRET_KEY", "")
    if not key:
        return key_file_read_or_create(Path(data_dir) / KEY_FILE_NAME)
    if is_weak(key) and not debug:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is the development value or too weak (Django wants at least "
            f"{MIN_LENGTH} characters, {MIN_UNIQUE_CHARACTERS} of them different). Set a long random value, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`, or unset it to have one "
            "generated into the data directory."
        )
    return key
