#!/usr/bin/env python3
"""Sandboxed executions per second on the 164 HumanEval canonical solutions: Orchard's batch path
(`orchard exec --jsonl`: by default each program is a process forked from a warm interpreter in a persistent
per-slot bubblewrap sandbox; also with `--no-site-packages`, and with `--no-fork-server` = a fresh sandbox and
interpreter per program) against human-eval's own approach
(re-implemented here from its description: a multiprocessing.Process per sample with a Manager list for the
result, `reliability_guard()` disabling destructive functions, `swallow_io`, `time_limit` via setitimer, a
thread pool over samples), in the same run, on the same machine, with the same number of workers.

Usage: python3 benches/compare/sandbox_humaneval.py [--orchard target/release/orchard] [--repeats 5]
Prints per-repeat timings, the median executions/s of each, the ratio, and ends with ONE JSON line.
"""
import argparse
import contextlib
import faulthandler
import gzip
import io
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_programs(path):
    with gzip.open(path, "rt") as f:
        problems = [json.loads(line) for line in f]
    return [
        p["prompt"] + p["canonical_solution"] + "\n" + p["test"] + "\n" + f"check({p['entry_point']})"
        for p in problems
    ]


# ---------------------------------------------------------------- human-eval's approach (re-implemented) --


class TimeoutException(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds):
    def handler(signum, frame):
        raise TimeoutException("Timed out!")

    signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.signal(signal.SIGALRM, handler)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


class _NoInput(io.StringIO):
    def read(self, *a, **k):
        raise OSError

    def readline(self, *a, **k):
        raise OSError

    def readlines(self, *a, **k):
        raise OSError

    def readable(self, *a, **k):
        return False


@contextlib.contextmanager
def swallow_io():
    sink = _NoInput()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        old_stdin = sys.stdin
        sys.stdin = sink
        try:
            yield
        finally:
            sys.stdin = old_stdin


@contextlib.contextmanager
def scratch_dir():
    with tempfile.TemporaryDirectory() as d:
        old = os.getcwd()
        os.chdir(d)
        try:
            yield d
        finally:
            os.chdir(old)


def disable_destructive_functions():
    """What human-eval's reliability_guard() does (it is "not a security sandbox"): turn off the functions a
    generated program could use to damage the host, and ask for one thread in numerical libraries."""
    import builtins
    import shutil

    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in (
        "kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg rename renames truncate "
        "replace unlink fchmod fchown chmod chown chroot lchown getcwd chdir"
    ).split():
        if hasattr(os, name):
            setattr(os, name, None)
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, None)
    subprocess.Popen = None
    for mod in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[mod] = None


def _unsafe_execute(program, timeout, result):
    with scratch_dir():
        import shutil

        rmtree, rmdir, chdir = shutil.rmtree, os.rmdir, os.chdir
        disable_destructive_functions()
        try:
            with swallow_io():
                with time_limit(timeout):
                    exec(program, {})
            result.append("passed")
        except TimeoutException:
            result.append("timed out")
        except BaseException as e:  # noqa: BLE001 - as the original: any failure is a failed sample
            result.append(f"failed: {e}")
        shutil.rmtree, os.rmdir, os.chdir = rmtree, rmdir, chdir


def check_correctness(program, timeout):
    manager = multiprocessing.Manager()
    result = manager.list()
    p = multiprocessing.Process(target=_unsafe_execute, args=(program, timeout, result))
    p.start()
    p.join(timeout=timeout + 1)
    if p.is_alive():
        p.kill()
    out = result[0] if result else "timed out"
    manager.shutdown()
    return out


def run_humaneval_style(programs, workers, timeout):
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(check_correctness, p, timeout) for p in programs]
        results = [f.result() for f in as_completed(futures)]
    elapsed = time.perf_counter() - t
    passed = sum(r == "passed" for r in results)
    return elapsed, passed


# ---------------------------------------------------------------------------------------- Orchard ---------


def run_orchard(orchard, jsonl_path, timeout, extra=()):
    t = time.perf_counter()
    out = subprocess.run(
        [orchard, "exec", "--jsonl", jsonl_path, "--no-cache", "--timeout", f"{timeout}s", *extra],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - t
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    passed = sum(r.get("status") == "ok" for r in rows)
    isolation = rows[0].get("isolation") if rows else None
    if out.returncode not in (0, 1):
        sys.exit(f"orchard exec failed ({out.returncode}): {out.stderr}")
    return elapsed, passed, isolation


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orchard", default=os.path.join(ROOT, "target", "release", "orchard"))
    ap.add_argument("--data", default=os.path.join(ROOT, "tests", "data", "humaneval.jsonl.gz"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout", type=float, default=3.0)
    args = ap.parse_args()

    programs = load_programs(args.data)
    n = len(programs)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for p in programs:
            f.write(json.dumps({"program": p}) + "\n")
        jsonl = f.name
    times = {"orchard": [], "orchard_no_site": [], "orchard_one_shot": [], "humaneval": []}
    flags = {"orchard": [], "orchard_no_site": ["--no-site-packages"], "orchard_one_shot": ["--no-fork-server"]}
    passed = {}
    isolation = None
    try:
        for r in range(args.repeats):
            # Rotate the order so that no side always runs on a warmer (or busier) machine.
            k = r % len(times)
            order = list(times)[k:] + list(times)[:k]
            for side in order:
                if side == "humaneval":
                    t, passed[side] = run_humaneval_style(programs, args.workers, args.timeout)
                else:
                    t, passed[side], isolation = run_orchard(args.orchard, jsonl, args.timeout, flags[side])
                times[side].append(t)
                print(f"repeat {r + 1}/{args.repeats} {side:15s}: {t:6.3f} s for {n} programs", flush=True)
    finally:
        os.unlink(jsonl)

    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: n / m for k, m in med.items()}
    ratio = rate["orchard"] / rate["humaneval"]
    ratio_no_site = rate["orchard_no_site"] / rate["humaneval"]
    ratio_one_shot = rate["orchard_one_shot"] / rate["humaneval"]
    print(f"orchard exec ({isolation})          : {rate['orchard']:7.1f} executions/s (median {med['orchard']:.3f} s), "
          f"{passed['orchard']}/{n} passed")
    print(f"orchard exec --no-site-packages : {rate['orchard_no_site']:7.1f} executions/s "
          f"(median {med['orchard_no_site']:.3f} s), {passed['orchard_no_site']}/{n} passed")
    print(f"orchard exec --no-fork-server   : {rate['orchard_one_shot']:7.1f} executions/s "
          f"(median {med['orchard_one_shot']:.3f} s), {passed['orchard_one_shot']}/{n} passed")
    print(f"human-eval approach             : {rate['humaneval']:7.1f} executions/s (median {med['humaneval']:.3f} s), "
          f"{passed['humaneval']}/{n} passed")
    print(f"ratio orchard / human-eval: {ratio:.2f}x default, {ratio_no_site:.2f}x with --no-site-packages, "
          f"{ratio_one_shot:.2f}x with --no-fork-server (target >= 1.0x)")
    print(
        json.dumps(
            {
                "bench": "sandbox_humaneval",
                "programs": n,
                "repeats": args.repeats,
                "workers": args.workers,
                "orchard_isolation": isolation,
                "orchard_execs_per_s": round(rate["orchard"], 2),
                "orchard_no_site_execs_per_s": round(rate["orchard_no_site"], 2),
                "orchard_one_shot_execs_per_s": round(rate["orchard_one_shot"], 2),
                "humaneval_execs_per_s": round(rate["humaneval"], 2),
                "ratio": round(ratio, 3),
                "ratio_no_site": round(ratio_no_site, 3),
                "ratio_one_shot": round(ratio_one_shot, 3),
                "passed": passed,
                "median_s": {k: round(v, 4) for k, v in med.items()},
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
