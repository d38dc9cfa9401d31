"""The set-up the benchmarks share: a Django on a throwaway data folder, and stopping a server's process group.

A benchmark never touches the lead's database or data: its Django gets its own
``REWARDLOOP_DATA_DIR`` (and so its own SQLite file, ``DATABASE_URL`` removed).
:func:`throwaway_env` builds that environment for a child process;
:func:`django_start` applies it to this process, sets Django up and migrates.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INHERIT = object()  # ``broker=INHERIT``: keep whatever CELERY_BROKER_URL the environment has


def throwaway_env(
    data_dir: str | os.PathLike, *, models_dir: str | os.PathLike | None = None, broker=INHERIT,
    base: Mapping[str, str] | None = None, **extra: str,
) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) for a Django whose data lives in ``data_dir``.

    ``REWARDLOOP_DATA_DIR`` is ``data_dir`` and ``DATABASE_URL`` is removed (the app's own SQLite
    file there); ``REWARDLOOP_MODELS_DIR`` is ``models_dir`` when given, else as in ``base``;
    ``CELERY_BROKER_URL`` is ``broker`` when a string (``None``: removed, so the app's default
    broker); ``extra`` is added as is, last (so ``DATABASE_URL=...`` gives a benchmark that needs
    PostgreSQL a database of its own instead of the SQLite file).
    """
    env = dict(os.environ if base is None else base)
    env["REWARDLOOP_DATA_DIR"] = str(data_dir)
    env.pop("DATABASE_URL", None)
    if models_dir is not None:
        env["REWARDLOOP_MODELS_DIR"] = str(models_dir)
    if broker is None:
        env.pop("CELERY_BROKER_URL", None)
    elif broker is not INHERIT:
        env["CELERY_BROKER_URL"] = broker
    env.update(extra)
    return env


def django_start(data_dir: str | os.PathLike | None = None, *, migrate: bool = True, **env_options) -> None:
    """Set this process's Django (``webapp.settings``) up, on :func:`throwaway_env` ``(data_dir,
    **env_options)`` when ``data_dir`` is given (else on the environment as it is), and migrate
    its database."""
    if data_dir is not None:
        env = throwaway_env(data_dir, **env_options)
        for name in set(os.environ) - set(env):
            del os.environ[name]
        os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import django

    django.setup()
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)


def stop_group(proc: subprocess.Popen, *, timeout: float = 20) -> None:
    """Stop a server started with ``start_new_session=True`` and all its children: SIGTERM to its
    process group, then SIGKILL if it has not ended within ``timeout`` seconds (and reaped)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
