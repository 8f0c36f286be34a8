"""Runs the property-based fuzz of the public API (fuzz_api.py) in a child interpreter: a segfault or
abort there fails this test with the child's output, instead of killing the whole test run. The
child's last test checks that at least half of every property's examples (every select method's
included) were valid inputs checked against ntkal._reference."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from _require import require

require("hypothesis")

HERE = pathlib.Path(__file__).resolve().parent


def test_public_api_fuzz_has_no_crash_and_no_wrong_answer():
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", str(HERE / "fuzz_api.py"), "-q", "-s", "-p",
                           "no:cacheprovider", "--rootdir", str(HERE)], cwd=HERE.parent, env=env, capture_output=True,
                          text=True, timeout=900)
    output = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, f"fuzz run failed (exit {proc.returncode}; negative = killed by a signal):\n{output}"
    assert " passed" in proc.stdout and "failed" not in proc.stdout, output
    # the share check (at least half of every property's examples valid and checked against the
    # reference) ran and printed its counts
    assert "valid share per property:" in proc.stdout, output
