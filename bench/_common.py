"""Helpers shared by the bench/ scripts: peak-RSS measurement, CPU-contention accounting, timing,
and running a measurement in a fresh subprocess so that each one has its own memory high-water mark."""
from __future__ import annotations

import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import threading
import time

# ------------------------------------------------------------------ memory


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident set size of this process in MB."""
    kb = _status_kb("VmRSS")
    if kb is None:  # no /proc: fall back to the high-water mark (an over-estimate)
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0


class PeakRSS:
    """Peak resident memory of this process from ``start()`` on.

    On Linux the kernel's high-water mark (VmHWM, which is also ``ru_maxrss``) is reset by writing
    ``5`` to /proc/self/clear_refs, so the peak is exact and costs nothing while the work runs.
    Where that is not allowed, a thread polls VmRSS every ``interval`` seconds (may miss short spikes).
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.method = ""
        self._peak_kb = 0
        self._stop = None
        self._thread = None

    def start(self) -> "PeakRSS":
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            if _status_kb("VmHWM") is None:
                raise OSError("no VmHWM")
            self.method = "kernel high-water mark (VmHWM after clear_refs)"
        except OSError:
            self.method = f"VmRSS polled every {self.interval * 1e3:g} ms"
            self._peak_kb = _status_kb("VmRSS") or 0
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self._peak_kb = max(self._peak_kb, _status_kb("VmRSS") or 0)
            time.sleep(self.interval)

    def stop_mb(self) -> float:
        """Peak RSS in MB since ``start()``."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak_kb = max(self._peak_kb, _status_kb("VmRSS") or 0)
            return self._peak_kb / 1024.0
        return (_status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0


# ------------------------------------------------------------------ CPU contention


def _busy_cpu_seconds() -> float | None:
    """Busy CPU time of the whole machine (all cores, all processes) in seconds, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()  # children count once waited for (subprocess.run waits)
    return t.user + t.system + t.children_user + t.children_system


class Contention:
    """Average number of cores that *other* processes kept busy while a block of work ran
    (machine busy time minus this process's and its waited-for children's CPU time)."""

    def __enter__(self):
        self._wall = time.perf_counter()
        self._busy = _busy_cpu_seconds()
        self._own = _own_cpu_seconds()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._wall
        busy = _busy_cpu_seconds()
        if busy is None or self._busy is None or wall <= 0:
            self.other_cores = float("nan")
        else:
            other = (busy - self._busy) - (_own_cpu_seconds() - self._own)
            self.other_cores = max(0.0, other / wall)
        self.wall = wall
        return False


def machine_info() -> dict:
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    try:
        import psutil

        mem_gb = psutil.virtual_memory().total / 2**30
    except Exception:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": model, "cores": os.cpu_count(), "mem_gb": round(mem_gb, 1),
            "python": platform.python_version(), "loadavg": [round(x, 2) for x in load], **code_version(),
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "unset"), "openblas_kernels": openblas_kernels()}


def openblas_kernels() -> dict:
    """The kernel set each loaded OpenBLAS really uses (threadpoolctl's ``architecture``): with
    OPENBLAS_CORETYPE unset, the one OpenBLAS picks for this processor."""
    try:
        import numpy  # noqa: F401  (loads NumPy's OpenBLAS)
        from threadpoolctl import threadpool_info
    except ImportError:
        return {}
    return {os.path.basename(i["filepath"]): i.get("architecture") for i in threadpool_info()
            if i.get("internal_api") == "openblas"}


def code_version() -> dict:
    """The commit the numbers belong to, and whether the tree had uncommitted changes (then they
    are not the commit's numbers)."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit or "unknown", "dirty": dirty}


# ------------------------------------------------------------------ timing


def timed(fn, *args, **kwargs):
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


# ------------------------------------------------------------------ subprocess measurements

CHILD_MARKER = "@@BENCH_RESULT@@ "


def emit_child_result(result: dict) -> None:
    """Called in the child: print the result as one marked JSON line on stdout."""
    sys.stdout.write(CHILD_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_child(argv: list[str], env_extra: dict | None = None, timeout: float | None = None) -> dict:
    """Run ``python argv...`` in a fresh process; return the dict it emitted with
    :func:`emit_child_result`, or ``{"error": ...}`` when it failed (crash, out of memory, timeout)."""
    env = dict(os.environ)
    env.update(env_extra or {})
    try:
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(CHILD_MARKER):
            return json.loads(line[len(CHILD_MARKER):])
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
    return {"error": f"exit code {proc.returncode}: " + " | ".join(tail)}
