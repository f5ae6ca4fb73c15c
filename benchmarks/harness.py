"""The measuring harness the bench_* scripts share: every measurement runs in a fresh interpreter
(`worker`: the script re-invoked with `--worker TASK --kw JSON`, printing one JSON dict with its peak
RSS), plus whole-command timing (`run_measured`) and the machine/load line printed with every result.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time

import torch


def set_threads(threads=None):
    """torch with `threads` intra-op threads (None: torch's default); for worker tasks."""
    if threads:
        torch.set_num_threads(threads)
    return torch


def vmhwm_bytes() -> int:
    """Peak resident set size of this process so far (VmHWM, includes file-backed mmap pages)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return -1


def status_bytes(field: str) -> int:
    """One size field of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile, …) in bytes, -1 if absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (writing 5 to /proc/self/clear_refs), so that a later VmHWM is the
    peak of what ran after this call; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class AnonPeak:
    """Samples RssAnon (private memory: heap, torch tensors; not file-backed mmap pages) of this process
    every `dt` seconds in a daemon thread; `.stop()` returns the peak in bytes."""

    def __init__(self, dt=0.005):
        self.peak, self.dt, self._stop = 0, dt, threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, status_bytes("RssAnon"))
            time.sleep(self.dt)

    def stop(self):
        self._stop.set()
        self.t.join()
        self.peak = max(self.peak, status_bytes("RssAnon"))
        return self.peak


def run_child(argv: list[str], env=None, timeout=None) -> tuple[float, str]:
    """Run argv to completion: (wall seconds, stdout); raises with its stderr if it fails."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    out, err = p.communicate(timeout=timeout)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({p.returncode}):\n{err[-3000:]}")
    return wall, out


def run_measured(argv: list[str], env=None) -> tuple[float, int]:
    """Wall time and peak RSS (bytes) of an arbitrary command, from os.wait4's rusage of that child."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({p.returncode}):\n{err[-3000:]}")
    return wall, ru.ru_maxrss * 1024


def worker(script: str, task: str, env=None, **kw) -> dict:
    """Run `python script --worker task --kw JSON` in a fresh interpreter (environment `env`, default
    this one's); it prints one JSON dict."""
    argv = [sys.executable, script, "--worker", task, "--kw", json.dumps(kw)]
    wall, out = run_child(argv, env=env)
    res = json.loads(out.strip().splitlines()[-1])
    res["process_wall_s"] = wall
    return res


def worker_main(tasks: dict, argv=None) -> bool:
    """If argv is a worker call, run the task, print its JSON result (+ peak RSS) and return True."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] != "--worker":
        return False
    kw = json.loads(argv[3]) if len(argv) > 3 else {}
    res = tasks[argv[1]](**kw)
    res["vmhwm_bytes"] = vmhwm_bytes()
    print(json.dumps(res))
    return True


def machine_line() -> str:
    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan,) * 3
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({cpu}), torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def finish(json_path, record) -> None:
    """The last line every benchmark prints (the machine), and its record as JSON when --json was given."""
    print(f"# {machine_line()}")
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(record, fh, indent=1)
