"""Orchard vs llama.cpp on the default model: prefill tok/s (one 200-token prompt) and aggregate greedy decode tok/s at
B = 1, 16, 64 (plus Orchard's f32 scoring tok/s), in one run, same GGUF, same prompts, same thread count. Ends with one JSON line of figures.

    python benches/compare/engine_llamacpp.py            # needs target/release/orchard and llama-cpp-python
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llamacpp_util as U  # noqa: E402

# Orchard's built-in bench text (src/cmd/bench.rs DEFAULT_TEXT).
TEXT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips "
        "did Natalia sell altogether in April and May? Weng earns $12 an hour for babysitting. Yesterday, she just did "
        "50 minutes of babysitting. How much did she earn? Betty is saving money for a new wallet which costs $100. "
        "Betty has only half of the money she needs. Her parents decided to give her $15 for that purpose, and her "
        "grandparents twice as much as her parents. How much more money does Betty need to buy the wallet?")


def orchard(args):
    cmd = [args.orchard, "bench", "--model", args.gguf, "--threads", str(args.threads), "--prompt-tokens",
           str(args.prompt_tokens), "--batch", ",".join(map(str, args.batch)), "--new-tokens", str(args.new_tokens),
           "--repeat", str(args.repeat)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()
    return json.loads(out[-1])


def llamacpp(args):
    m = U.Model(args.gguf)
    base = m.tokenize(TEXT)
    res = {}
    ctx = m.context(n_ctx=max(512, args.prompt_tokens + 16), n_seq=1, threads=args.threads)
    prompt = U.prompt_ids(base, args.prompt_tokens, 0)
    times = []
    for r in range(args.repeat + 1):
        ctx.clear()
        t = time.perf_counter()
        ctx.decode([(tok, i, 0, i == len(prompt) - 1) for i, tok in enumerate(prompt)])
        if r:
            times.append(time.perf_counter() - t)
    res["prefill_tok_per_s"] = args.prompt_tokens / U.median(times)
    for b in args.batch:
        per_seq = args.prompt_tokens + args.new_tokens + 8
        ctx = m.context(n_ctx=b * per_seq, n_seq=b, threads=args.threads, n_batch=512)
        times = []
        for r in range(args.repeat):
            ctx.clear()
            items, last = [], []
            for s in range(b):
                p = U.prompt_ids(base, args.prompt_tokens, s)
                items += [(tok, i, s, i == len(p) - 1) for i, tok in enumerate(p)]
            # Prefill (untimed), one sequence per decode call so each gets its logits row.
            for s in range(b):
                idx = ctx.decode(items[s * args.prompt_tokens:(s + 1) * args.prompt_tokens])
                last.append(int(ctx.logits(idx[-1]).argmax()))
            t = time.perf_counter()
            for step in range(args.new_tokens):
                pos = args.prompt_tokens + step
                idx = ctx.decode([(last[s], pos, s, True) for s in range(b)])
                last = [int(ctx.logits(i).argmax()) for i in idx]
            times.append(time.perf_counter() - t)
        res[f"decode_b{b}_tok_per_s"] = b * args.new_tokens / U.median(times)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gguf", default=U.default_gguf())
    ap.add_argument("--orchard", default=os.path.join(os.path.dirname(__file__), "../../target/release/orchard"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=200)
    ap.add_argument("--batch", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    o = orchard(args)
    l = llamacpp(args)
    figures = {"threads": args.threads, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens}
    for k in l:
        figures[f"orchard_{k}"] = round(o[k], 1)
        figures[f"llamacpp_{k}"] = round(l[k], 1)
        figures[f"ratio_{k}"] = round(o[k] / l[k], 2)
        print(f"{k:24s} orchard {o[k]:8.1f}  llama.cpp {l[k]:8.1f}  ratio {o[k] / l[k]:.2f}", file=sys.stderr)
    figures["orchard_score_tok_per_s"] = round(o["score_tok_per_s"], 1)
    print(f"{'score_tok_per_s':24s} orchard {o['score_tok_per_s']:8.1f}  (f32 teacher forcing; target ≥ 250)", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
