"""The `orchard` Python package against the `orchard` CLI on the same generation, in one run (issue 17).

Both sides load the default model and sample the same prompts (GSM8K train questions, chat-templated, n samples
each, fixed seed and length with `ignore_eos`, so both generate exactly the same tokens — checked): the CLI as
`orchard generate --prompts FILE` (a whole process), Python as a whole process running
`import orchard; orchard.Engine().generate(...)`. Runs alternate A B A B; the ratio is per pair. Also times
`import orchard` alone (a fresh interpreter, minus the bare interpreter's start).

    python3 benches/compare/python_overhead.py --orchard target/release/orchard --python .venv-py/bin/python

Ends with one JSON line: medians and `python_over_cli` (target: ≤ 1.05).
"""
import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def questions(k):
    out = []
    with gzip.open(REPO / "datasets" / "data" / "gsm8k_train.jsonl.gz", "rt") as f:
        for line in f:
            out.append(json.loads(line)["question"])
            if len(out) == k:
                break
    return out


PY_SIDE = """
import json, sys, orchard
prompts = json.load(open(sys.argv[1]))
n, max_new = int(sys.argv[2]), int(sys.argv[3])
out = orchard.Engine("default").generate(prompts, n=n, temperature=0.8, max_new_tokens=max_new, seed=7,
                                         ignore_eos=True)
print(json.dumps([[s.token_ids for s in per] for per in out]))
"""


def timed(cmd, env=None):
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {r.stderr[-2000:]}")
    return dt, r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--orchard", default=str(REPO / "target" / "release" / "orchard"))
    ap.add_argument("--python", default=sys.executable, help="an interpreter with the orchard package installed")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    prompts = questions(a.prompts)
    with tempfile.TemporaryDirectory() as work:
        jsonl = os.path.join(work, "prompts.jsonl")
        with open(jsonl, "w") as f:
            f.writelines(json.dumps({"prompt": p}) + "\n" for p in prompts)
        pjson = os.path.join(work, "prompts.json")
        with open(pjson, "w") as f:
            json.dump(prompts, f)
        script = os.path.join(work, "py_side.py")
        with open(script, "w") as f:
            f.write(PY_SIDE)
        cli = [a.orchard, "generate", "--prompts", jsonl, "-n", str(a.n), "--temperature", "0.8", "--max-new-tokens",
               str(a.max_new_tokens), "--seed", "7", "--ignore-eos"]
        py = [a.python, script, pjson, str(a.n), str(a.max_new_tokens)]
        cli_s, py_s, ratios = [], [], []
        for _ in range(a.runs):
            c, cout = timed(cli)
            p, pout = timed(py)
            cli_s.append(c)
            py_s.append(p)
            ratios.append(p / c)
        rows = [json.loads(line) for line in cout.splitlines()]
        want = [[r["token_ids"] for r in rows if r["prompt_index"] == i] for i in range(len(prompts))]
        if json.loads(pout) != want:
            sys.exit("the CLI and Python generated different tokens")
        bare = [timed([a.python, "-c", "pass"])[0] for _ in range(a.runs)]
        imp = [timed([a.python, "-c", "import orchard"])[0] for _ in range(a.runs)]
    print(json.dumps({
        "prompts": a.prompts, "n": a.n, "max_new_tokens": a.max_new_tokens, "runs": a.runs,
        "cli_s": statistics.median(cli_s), "python_s": statistics.median(py_s),
        "python_over_cli": statistics.median(ratios),
        "import_orchard_s": statistics.median(imp) - statistics.median(bare),
        "same_tokens": True,
    }))


if __name__ == "__main__":
    main()
