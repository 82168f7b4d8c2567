"""The tree workload (issue 3): (a) Orchard with prefix sharing + scheduler, (b) Orchard with sharing off (each
branch recomputes its whole prefix), (c) llama.cpp through llama-cpp-python's low-level API — forks by
`llama_memory_seq_cp`, every open branch of every tree batched into one `llama_decode` per step, native sampler-free
loop (tokens drawn in numpy from the same temperature-1 distribution), `kv_unified = false` (its faster mode here).
Same GGUF, same chat-templated GSM8K prompts, same shapes, same thread count, one run. Ends with one JSON line.

    python benches/compare/tree_llamacpp.py --preset small        # CI-sized; --preset full for BENCHMARKS.md
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llamacpp_util as U  # noqa: E402
import llama_cpp as L  # noqa: E402

SHAPES = {"small": 4, "full": 16}


def orchard(args, sharing):
    cmd = [args.orchard, "bench", "--model", args.gguf, "--threads", str(args.threads), "--tree", args.preset]
    if not sharing:
        cmd.append("--no-sharing")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()
    return json.loads(out[-1])


def gsm8k_prompts(args, m, n):
    """The same chat-templated GSM8K questions Orchard uses, tokenized by Orchard (ids are identical to llama.cpp's)."""
    rows = []
    src = subprocess.run([args.orchard, "sample", "--help"], capture_output=True, text=True)  # binary sanity check
    assert src.returncode == 0
    import gzip
    path = os.path.join(os.path.dirname(__file__), "../../datasets/data/gsm8k_train.jsonl.gz")
    with gzip.open(path, "rt") as fh:
        for line in fh:
            rows.append(json.loads(line)["question"])
            if len(rows) == n:
                break
    ids = []
    for q in rows:
        out = subprocess.run([args.orchard, "tokenize", "--model", args.gguf, "--chat", "--text", q],
                             check=True, capture_output=True, text=True).stdout
        ids.append(json.loads(out)["ids"])
    return ids


def llamacpp(args, prompts):
    P, B, C, R = len(prompts), 4, 48, 128
    m = U.Model(args.gguf)
    longest = max(len(p) for p in prompts) + 2 * C + R + 8
    n_seq = P * B * B
    ctx = m.context(n_ctx=n_seq * longest, n_seq=n_seq, threads=args.threads, n_batch=512)
    # llama.cpp's own sampler (softmax + draw in C, temperature 1), one chain shared by every sequence.
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(1234))
    t0 = time.perf_counter()
    pos, cur = {}, {}

    def grow(seqs, steps):
        """Decode `steps` tokens for every seq in seqs (their first token already drawn), one llama_decode per
        step for all of them."""
        for k in range(steps):
            idx = ctx.decode([(cur[s], pos[s], s, True) for s in seqs])
            for s, i in zip(seqs, idx):
                pos[s] += 1
                cur[s] = L.llama_sampler_sample(chain, ctx.ctx, i)
        return steps * len(seqs)

    generated = 0
    # Level 1: each prompt is prefilled once in its own sequence, then forked into B children
    # (child (p, c) lives in sequence p*B*B + c*B); each child draws its first token from the prompt's logits.
    children = []
    for p, ids in enumerate(prompts):
        base = p * B * B
        idx = ctx.decode([(t, i, base, i == len(ids) - 1) for i, t in enumerate(ids)])
        for c in range(B):
            sid = base + c * B
            if c:
                ctx.seq_cp(base, sid)
            pos[sid] = len(ids)
            cur[sid] = L.llama_sampler_sample(chain, ctx.ctx, idx[-1])
            children.append(sid)
    generated += grow(children, C - 1) + len(children)
    # Level 2: fork each child into B grandchildren (the child's last drawn token is fed to each as its first
    # input, so every grandchild draws its own first token from the child's final logits).
    grand = []
    idx = ctx.decode([(cur[s], pos[s], s, True) for s in children])
    for s, i in zip(children, idx):
        pos[s] += 1
        for g in range(B):
            gid = s + g
            if g:
                ctx.seq_cp(s, gid)
            pos[gid] = pos[s]
            cur[gid] = L.llama_sampler_sample(chain, ctx.ctx, i)
            grand.append(gid)
    generated += grow(grand, C - 1) + len(grand)
    # Level 3: one rollout per grandchild, continuing its own sequence.
    generated += grow(grand, R)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "generated_tokens": generated, "tok_per_s": generated / secs}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="small", choices=SHAPES)
    ap.add_argument("--gguf", default=U.default_gguf())
    ap.add_argument("--orchard", default=os.path.join(os.path.dirname(__file__), "../../target/release/orchard"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    a = orchard(args, True)
    b = orchard(args, False)
    prompts = gsm8k_prompts(args, None, SHAPES[args.preset])
    c = llamacpp(args, prompts)
    assert a["checksum"] == b["checksum"], "sharing changed the generated tokens"
    fig = {
        "preset": args.preset, "threads": args.threads, "generated_tokens": a["generated_tokens"],
        "a_orchard_shared_tok_per_s": round(a["tok_per_s"], 1), "a_seconds": round(a["seconds"], 1),
        "b_orchard_unshared_tok_per_s": round(b["tok_per_s"], 1), "b_seconds": round(b["seconds"], 1),
        "c_llamacpp_tok_per_s": round(c["tok_per_s"], 1), "c_seconds": round(c["seconds"], 1),
        "ratio_a_over_c": round(a["tok_per_s"] / c["tok_per_s"], 2),
        "ratio_a_over_b": round(a["tok_per_s"] / b["tok_per_s"], 2),
        "prefill_computed_a": a["metrics"]["prefill_tokens_computed"],
        "prefill_computed_b": b["metrics"]["prefill_tokens_computed"],
        "prefill_ratio_a_over_b": round(a["metrics"]["prefill_tokens_computed"] / max(1, b["metrics"]["prefill_tokens_computed"]), 3),
        "prefix_hit_rate_a": round(a["prefix_hit_rate"], 3), "batch_occupancy_a": round(a["batch_occupancy"], 1),
        "kv_bytes_peak_a": a["metrics"]["kv_bytes_peak"], "peak_rss_a": a["peak_rss_bytes"],
        "weights_bytes": a["weights_bytes"],
    }
    for k, v in fig.items():
        print(f"{k:32s} {v}", file=sys.stderr)
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
