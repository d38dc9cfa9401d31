"""The reward-model, guard and generation-batch settings the README lists as environment variables are read from
the environment."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
READ = (
    "import django; django.setup(); "
    "from webapp.training import reward_batch; from webapp.rewards import services; "
    "print(services.min_judgments(), reward_batch.fresh_prompts(), reward_batch.trust_min_weight())"
)


def run(tmp_path, read=READ, **env):
    full_env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "REWARDLOOP_RM_", "REWARDLOOP_GUARD_", "REWARDLOOP_GENERATION_"))
    }
    full_env.update(REWARDLOOP_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="webapp.settings", **env)
    return subprocess.run([sys.executable, "-c", read], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=120)


def test_the_defaults_hold_when_the_environment_is_silent(tmp_path):
    result = run(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["32", "16", "0.05"]


def test_the_environment_sets_them(tmp_path):
    result = run(tmp_path, REWARDLOOP_RM_MIN_JUDGMENTS="8", REWARDLOOP_RM_FRESH_PROMPTS="4", REWARDLOOP_RM_TRUST_MIN_WEIGHT="0.2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["8", "4", "0.2"]


def test_a_bad_value_is_a_clear_error(tmp_path):
    result = run(tmp_path, REWARDLOOP_RM_MIN_JUDGMENTS="many")
    assert result.returncode != 0
    assert "REWARDLOOP_RM_MIN_JUDGMENTS='many' is not an integer" in result.stderr


READ_BATCH = "import django; django.setup(); from webapp.annotation import services; print(services.GENERATION_BATCH)"


def test_the_generation_batch_is_16_unless_the_environment_says_otherwise(tmp_path):
    assert run(tmp_path, read=READ_BATCH).stdout.split() == ["16"]
    assert run(tmp_path, read=READ_BATCH, REWARDLOOP_GENERATION_BATCH="8").stdout.split() == ["8"]


def test_a_generation_batch_below_one_is_a_clear_error(tmp_path):
    result = run(tmp_path, read=READ_BATCH, REWARDLOOP_GENERATION_BATCH="0")
    assert result.returncode != 0
    assert "REWARDLOOP_GENERATION_BATCH='0' is below 1" in result.stderr
