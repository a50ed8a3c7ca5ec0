"""The lint commands of tests/test_lint.py, started in the background as soon as a
session has collected their tests.

mypy alone takes ~100 s of one core on a cold cache (CI checks out a fresh clone), and
the suite's dbt cycles keep about one core of two busy: started at collection, the
lint tools run beside the first modules instead of after them. The tests then wait for
the same command's result and assert on it exactly as before; a test run on its own
(or a command never started) runs its command when it asks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TIMEOUT_S = 900


def mypy_cache_dir() -> Path:
    """A cache that outlives the clone (the repo's own .mypy_cache is always cold on a
    fresh CI clone): ``MONITOR_TEST_MYPY_CACHE``, else ``$XDG_CACHE_HOME`` or
    ``~/.cache``, under ``dq-monitor/mypy``. Sharing it between clones and branches is
    safe: mypy checks every cached module against its source file's hash and options."""
    if os.environ.get("MONITOR_TEST_MYPY_CACHE"):
        return Path(os.environ["MONITOR_TEST_MYPY_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dq-monitor" / "mypy"


# test name in tests/test_lint.py -> its command (run in the repo root)
COMMANDS: dict[str, list[str]] = {
    "test_ruff_clean": [str(BIN / "ruff"), "check", "monitor", "dqm_demo", "tests", "bench",
                        "deploy"],
    "test_mypy_clean": [str(BIN / "mypy"), "--cache-dir", str(mypy_cache_dir()),
                        "--sqlite-cache", "monitor", "dqm_demo"],
    "test_sqlfluff_clean": [str(BIN / "sqlfluff"), "lint", "pipeline",
                            "--disable-progress-bar"],
    "test_layers_import_only_downward": [str(BIN / "lint-imports"), "--no-cache"],
}


@dataclass
class Job:
    """One command running in the background, its output in temp files (no pipe to fill)."""

    cmd: list[str]
    proc: subprocess.Popen[bytes]
    out: IO[bytes]
    err: IO[bytes]

    def result(self) -> subprocess.CompletedProcess[str]:
        try:
            code = self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        texts = []
        for f in (self.out, self.err):
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
            f.close()
        return subprocess.CompletedProcess(self.cmd, code, texts[0], texts[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_jobs: dict[str, Job] = {}


def start(names: set[str]) -> None:
    """Start the commands of the lint tests ``names`` (those not started yet)."""
    for name in sorted(names & COMMANDS.keys() - _jobs.keys()):
        cmd = COMMANDS[name]
        if name == "test_mypy_clean":
            mypy_cache_dir().mkdir(parents=True, exist_ok=True)
        # closed by Job.result or stop_all: the files outlive this call
        out = tempfile.TemporaryFile()  # noqa: SIM115
        err = tempfile.TemporaryFile()  # noqa: SIM115
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
        _jobs[name] = Job(cmd, proc, out, err)


def result(name: str) -> subprocess.CompletedProcess[str]:
    """The finished command of lint test ``name``: the background one, else run now."""
    start({name})
    return _jobs.pop(name).result()


def stop_all() -> None:
    """End the commands whose tests never asked (a session stopped early)."""
    while _jobs:
        _, job = _jobs.popitem()
        job.stop()
        job.out.close()
        job.err.close()
