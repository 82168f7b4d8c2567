"""Python reward functions through Orchard against calling them directly in Python, in one run, on the same rows.

The reward is TRL's documented length reward (`reward_len` in tests/reference/user_rewards.py), over N rows
(default 10,000) of `{prompt, completion, answer}`. Measured, each the median of --runs runs:

* orchard:       `orchard reward --kind python:FILE:reward_len` (workers in bubblewrap, the default), whole command:
                 start-up, interpreter probe, worker start, JSONL in, batched calls, JSON out;
* orchard_unsandboxed: the same with `--no-reward-sandbox`;
* python_direct: a fresh `python3` that reads the same JSONL and calls the function once on all rows (what a TRL
                 script does in-process), whole command.

The scores must be equal row for row (checked). With --judge, also the judge reward's rows/s with the default model
(`kind = "judge"`, Yes/No choice log-probs) over --judge-rows rows. Ends with one JSON line.

Usage (from the repository root; builds nothing):
    python3 benches/compare/python_reward.py --orchard target/release/orchard [--rows 10000] [--runs 3] [--judge]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "../../tests/reference/user_rewards.py")


def timed(cmd, **kw):
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    dt = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return dt, out.stdout


def orchard_scores(stdout):
    return [json.loads(line)["score"] for line in stdout.splitlines() if line.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orchard", default="target/release/orchard")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--judge", action="store_true")
    ap.add_argument("--judge-rows", type=int, default=64)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="orchard-pyreward-")
    rows = os.path.join(tmp, "rows.jsonl")
    with open(rows, "w") as f:
        for i in range(args.rows):
            completion = "The answer is %d." % (i * 7) + " Because." * (i % 5)
            f.write(json.dumps({"prompt": "What is %d times 7?" % i, "completion": completion, "answer": str(i * 7)}))
            f.write("\n")
    kind = "python:%s:reward_len" % os.path.abspath(REFERENCE)
    sides = {
        "orchard": [args.orchard, "reward", "--kind", kind, "--input", rows],
        "orchard_unsandboxed": [args.orchard, "reward", "--kind", kind, "--input", rows, "--no-reward-sandbox"],
        "python_direct": [sys.executable, REFERENCE, "reward_len", rows],
    }
    times = {k: [] for k in sides}
    outputs = {}
    for _ in range(args.runs):
        for name, cmd in sides.items():
            dt, out = timed(cmd)
            times[name].append(dt)
            outputs[name] = out
    want = json.loads(outputs["python_direct"])
    for name in ("orchard", "orchard_unsandboxed"):
        got = orchard_scores(outputs[name])
        if got != want:
            sys.exit(f"{name}: scores differ from the direct call")
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "bench": "python_reward",
        "rows": args.rows,
        "runs": args.runs,
        "cores": os.cpu_count(),
        "seconds": {k: round(v, 3) for k, v in med.items()},
        "orchard_vs_direct": round(med["orchard"] / med["python_direct"], 2),
        "unsandboxed_vs_direct": round(med["orchard_unsandboxed"] / med["python_direct"], 2),
        "scores_equal": True,
    }
    if args.judge:
        judge_rows = os.path.join(tmp, "judge.jsonl")
        with open(rows) as src, open(judge_rows, "w") as dst:
            for _, line in zip(range(args.judge_rows), src):
                dst.write(line)
        config = os.path.join(tmp, "judge.toml")
        with open(config, "w") as f:
            f.write('kind = "judge"\n')
        dt, out = timed([args.orchard, "reward", "--config", config, "--input", judge_rows])
        n = len(orchard_scores(out))
        result["judge"] = {"rows": n, "seconds": round(dt, 2), "rows_per_s": round(n / dt, 1), "model": "default"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
