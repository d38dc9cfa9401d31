"""Production settings: no start with a weak secret key, and one HTTPS switch that makes `check --deploy` clean."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from webapp.secret_key import OLD_DEV_KEY, is_weak

REPO = Path(__file__).resolve().parents[2]
STRONG_KEY = "q7Vx2Lk9Zr4Tp8Wm3Hs6Jd1Nf5Bc0Gy-Ue_Oa7Ri2Kl9Xw4Ez8Qv3Ym6Pt1Sn5Dh"
PRINT_KEY = "from django.conf import settings; print(settings.SECRET_KEY)"


def run(tmp_path, *args, **env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REWARDLOOP_HTTPS"))}
    full_env.update(REWARDLOOP_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="webapp.settings", **env)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_the_https_switch_and_a_strong_key(tmp_path):
    result = run(
        tmp_path, "manage.py", "check", "--deploy", "--fail-level", "WARNING",
        REWARDLOOP_HTTPS="1", DJANGO_SECRET_KEY=STRONG_KEY, DJANGO_ALLOWED_HOSTS="rewardloop.example.org",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout and "WARNING" not in result.stdout + result.stderr


def test_check_deploy_is_clean_with_the_generated_key_too(tmp_path):
    result = run(
        tmp_path, "manage.py", "check", "--deploy", "--fail-level", "WARNING",
        REWARDLOOP_HTTPS="1", DJANGO_ALLOWED_HOSTS="rewardloop.example.org",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("key", [OLD_DEV_KEY, "short-key", "a" * 60, "django-insecure-" + STRONG_KEY])
def test_the_app_refuses_to_start_with_debug_off_and_a_weak_key(tmp_path, key):
    result = run(tmp_path, "manage.py", "check", DJANGO_SECRET_KEY=key)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "DJANGO_SECRET_KEY" in result.stderr


def test_a_weak_key_is_allowed_while_debugging(tmp_path):
    code = f"import django; django.setup(); {PRINT_KEY}"
    result = run(tmp_path, "-c", code, DJANGO_SECRET_KEY=OLD_DEV_KEY, DJANGO_DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == OLD_DEV_KEY


def test_without_a_key_one_is_generated_once_private_and_reused(tmp_path):
    first = run(tmp_path, "-c", PRINT_KEY)
    second = run(tmp_path, "-c", PRINT_KEY)
    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "secret_key"
    assert first.stdout.strip() == second.stdout.strip() == key_file.read_text().strip()
    assert not is_weak(key_file.read_text().strip())
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_weak_means_what_djangos_deploy_check_means():
    assert is_weak(OLD_DEV_KEY) and is_weak("x" * 49) and is_weak("abcd" * 20)
    assert is_weak("django-insecure-" + STRONG_KEY)
    assert not is_weak(STRONG_KEY)


def test_the_https_switch_sets_secure_cookies_proxy_header_redirect_and_hsts(tmp_path):
    names = [
        "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_PROXY_SSL_HEADER", "SECURE_SSL_REDIRECT",
        "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    ]  # fmt: skip
    code = f"from django.conf import settings; print([getattr(settings, n) for n in {names!r}])"
    on = run(tmp_path, "-c", code, REWARDLOOP_HTTPS="1").stdout.strip()
    off = run(tmp_path, "-c", code).stdout.strip()
    assert on == "[True, True, ('HTTP_X_FORWARDED_PROTO', 'https'), True, 31536000, True]"
    assert off == "[False, False, None, False, 0, False]"
