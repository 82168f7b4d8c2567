"""Side-by-side summary of the equal-budget runs written by benches/compare/search/run.sh (NOTES-search.md).

usage: python benches/compare/search/summarize.py OUT_DIR [ORCHARD_BIN]
Reads each run's trees/, trajectories/, pairs/ and search_metrics.json; re-extracts outcome pairs (and, for MCTS,
the step-level policies) with `orchard pairs`.
"""
import glob, json, os, subprocess, sys, tempfile
import pyarrow.parquet as pq

out, bin_ = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "orchard")

def table(run, kind):
    files = sorted(glob.glob(os.path.join(run, kind, "*.parquet")))
    return [r for f in files for r in pq.read_table(f).to_pylist()]

def pairs_with(run, policy):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "p.parquet")
        subprocess.run([bin_, "pairs", "--run", run, "--policy", policy, "--out", p], check=True, capture_output=True)
        return pq.read_table(p).num_rows

print("| algo | questions | ≥1 correct trajectory | generated tokens / question (tree nodes) | pairs (run policy) | outcome pairs | sequences / forward | rows / forward | KV prefix hit | wall s |")
print("|---|---|---|---|---|---|---|---|---|---|")
extra = {}
for algo in ["mcts", "toc", "bon", "bon4"]:
    run = os.path.join(out, algo)
    if not os.path.exists(os.path.join(run, "manifest.json")):
        continue
    m = json.load(open(os.path.join(run, "manifest.json")))
    nodes = table(run, "trees")
    trajs = table(run, "trajectories")
    tasks = {n["task_id"] for n in nodes}
    solved = {t["task_id"] for t in trajs if t["reward_error"] is None and t["reward"] >= 1.0}
    tokens = sum(len(n["token_ids"]) for n in nodes if n["parent_id"] is not None)
    met = json.load(open(os.path.join(run, "search_metrics.json")))
    policy = m["config"]["pairs"]["policy"]
    print(f"| {algo} | {len(tasks)} | {len(solved)} ({100*len(solved)/max(1,len(tasks)):.0f}%) | {tokens/max(1,len(tasks)):.0f} | "
          f"{m['counts']['pairs']} ({policy}) | {pairs_with(run, 'outcome')} | {met['engine/sequences_per_forward']:.1f} | "
          f"{met['engine/rows_per_forward']:.1f} | {100*met['engine/prefix_hit_rate']:.1f}% | {met['search/seconds']:.0f} |")
    if algo == "mcts":
        extra = {p: pairs_with(run, p) for p in ["agentq", "mcts-dpo", "itool", "step-dpo"]}
    if algo == "toc":
        votes = [n for n in nodes if n["parent_id"] is None]
        ok = sum(1 for n in nodes if n["exec_ok"])
        right = 0
        for v in votes:
            good = {n["exec_answer"] for n in nodes if n["task_id"] == v["task_id"] and (n["reward"] or 0) >= 1.0}
            right += v["exec_answer"] is not None and v["exec_answer"] in good
        print(f"\nToC: {ok} of {len(nodes)-len(votes)} programs ran and returned a result; {sum(1 for v in votes if v['exec_answer'])} questions got a majority vote, {right} of them correct.\n")
if extra:
    print()
    print("MCTS step-level pairs from the same saved trees (`orchard pairs --policy …`): " + ", ".join(f"{k} {v}" for k, v in extra.items()))
