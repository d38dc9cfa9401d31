"""Peak memory of importing a prompt file, against the file's size.

What it does:

1. writes a JSONL prompt file of each ``--mb`` size (distinct prompts of
   about 190 bytes per line, like a real export) into a temporary folder;
2. for each file, starts a fresh Python process that sets up Django on its own
   SQLite database in a temporary data directory (migrated), creates a
   project row, notes its peak resident memory so far (``rss_before_mb``:
   Django, the ORM and the migrations), runs
   ``webapp.annotation.services.prompts_import`` on the file and notes the
   peak again (``peak_rss_mb``), the seconds it took and what it stored;
3. ``--repo`` runs the same in another checkout of Rewardloop (for example
   the commit before the streaming import, extracted with
   ``git archive <commit> | tar -x -C /tmp/old``), so before and after are
   measured by the same script on the same machine.

The import caps (``REWARDLOOP_IMPORT_MAX_*``) are raised for the child so the
large files are accepted; code without caps ignores them.

Output: one JSON object on stdout: ``repo``, ``python``, and ``runs``, one
per size with ``file_mb``, ``lines``, ``rss_before_mb``, ``peak_rss_mb``,
``import_peak_over_before_mb``, ``seconds`` and ``created``.

Usage: ``.venv/bin/python bench/import_memory.py --mb 20 177 [--repo /tmp/old]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from django_env import throwaway_env  # noqa: E402

HERE = Path(__file__).resolve().parent.parent


def write_file(path: Path, megabytes: float) -> int:
    filler = "a reasonably long prompt about a film that the model should continue " * 2
    lines = 0
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < megabytes * 1_000_000:
            f.write(json.dumps({"text": f"{filler}#{lines}", "source": "bench"}) + "\n")
            lines += 1
    return lines


def child(repo: Path, file: Path) -> None:
    import resource
    import time

    sys.path.insert(0, str(repo))
    os.chdir(repo)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from webapp.annotation import services
    from webapp.policies.models import Project

    project = Project.objects.create(slug="bench", title="bench", base_model_path="/nonexistent")
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = services.prompts_import(project=project, path=file)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rss_before_mb": before_kb / 1024, "peak_rss_mb": peak_kb / 1024,
                      "seconds": seconds, "created": result.created}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, nargs="+", default=[20, 177], help="file sizes in MB (10^6 bytes)")
    parser.add_argument("--repo", type=Path, default=HERE, help="checkout of Rewardloop to measure")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.repo.resolve(), args.child)
        return
    runs = []
    with tempfile.TemporaryDirectory(prefix="rl-import-bench-") as tmp:
        for megabytes in args.mb:
            file = Path(tmp) / f"prompts-{megabytes:g}mb.jsonl"
            lines = write_file(file, megabytes)
            data_dir = Path(tmp) / f"data-{megabytes:g}"
            env = throwaway_env(  # its own SQLite database, never a shared one
                data_dir, REWARDLOOP_IMPORT_MAX_BYTES=str(10**12), REWARDLOOP_IMPORT_MAX_LINES=str(10**9)
            )
            out = subprocess.run(
                [sys.executable, __file__, "--repo", str(args.repo), "--child", str(file)],
                env=env, capture_output=True, text=True, check=False,
            )
            if out.returncode != 0:
                raise SystemExit(out.stderr[-4000:])
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append({
                "file_mb": round(file.stat().st_size / 1e6, 1),
                "lines": lines,
                **{k: round(v, 1) if isinstance(v, float) else v for k, v in measured.items()},
                "import_peak_over_before_mb": round(measured["peak_rss_mb"] - measured["rss_before_mb"], 1),
            })
            file.unlink()
    print(json.dumps({"repo": str(args.repo.resolve()), "python": platform.python_version(), "runs": runs}))


if __name__ == "__main__":
    main()
