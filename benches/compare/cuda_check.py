"""The whole GPU check of the device engine in one call (issue 18), beside PyTorch `transformers` on the same device,
ending with one JSON line:

1. parity: `orchard bench --dtype f32` / `--dtype bf16` print next-token log-prob gaps to the CPU engine's f32 path
   (bounds: 1e-3 in f32 over the vocabulary; 0.5 in bf16 over tokens of log-prob >= -10, transformers' own bf16 gap
   being 0.40 on the default model, tests/reference/bf16_transformers.py);
2. greedy tokens: `orchard generate --temperature 0` in f32 on the device vs the CPU engine in f32, 16 GSM8K prompts,
   32 tokens: how many sequences are identical;
3. with `--tests BIN` (the engine's test binary built with `--features cuda`): the device tests on the device
   (`ORCHARD_TEST_DEVICE`: forward vs the CPU engine on every architecture, fork == recompute, generation, scoring);
4. speed in bf16: prefill (200 tokens), decode B = 1/16/64/256, the tree workload `--preset` — Orchard through its
   scheduler (continuous batching, radix prefix cache, paged KV on the device) vs transformers `generate`;
5. a GSM8K `orchard search --algo mcts` job end to end on the device (32 test questions, 64-token steps; wall time
   including load, rewards and Parquet) vs transformers best-of-N on the same questions at the same number of
   generated tokens (generate() only): tokens per second of each.

The GPU machine has no network and the default GGUF (98 MB) is over the transfer limit, so both sides load one HF
directory: SmolLM2-135M-Instruct's exact config and tokenizer (`--export-config`, run where the GGUF is) and random
weights drawn here (`torch.manual_seed(0)`), saved as f32 safetensors. Shapes, not weights, set the speed; the greedy
check runs on these weights too.

    # here: cargo build --release --features cuda; python3 benches/compare/cuda_check.py --export-config GGUF
    python3 benches/compare/cuda_check.py --orchard target/release/orchard --config .gpu/smol-config [--tests BIN]
    # a dry run without a GPU (the device path on candle's CPU backend, transformers on the CPU, small sizes, no tree):
    python3 benches/compare/cuda_check.py --device cpu-candle --quick --model-dir DIR_OF_orchard_convert

Not in it (not built yet): DPO/GRPO steps on the GPU against TRL — Orchard's trainer runs on the CPU.
"""
import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../..")


def export_config(gguf, out):
    """SmolLM2's config and tokenizer from the default GGUF (run where the GGUF is; needs the `gguf` package)."""
    from transformers import AutoConfig
    d, f = os.path.split(gguf)
    AutoTokenizer.from_pretrained(d, gguf_file=f).save_pretrained(out)
    AutoConfig.from_pretrained(d, gguf_file=f).save_pretrained(out)


def make_model(config_dir, out):
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        torch.manual_seed(0)
        cfg = LlamaConfig.from_pretrained(config_dir)
        model = LlamaForCausalLM(cfg).float()
        model.save_pretrained(out, safe_serialization=True)
        for f in os.listdir(config_dir):
            if f.startswith("tokenizer") or f.endswith(".jinja"):
                shutil.copy(os.path.join(config_dir, f), out)
        shutil.copy(os.path.join(config_dir, "config.json"), out)
    return out


def gsm8k_questions(n, split="train"):
    rows = []
    with gzip.open(os.path.join(ROOT, f"datasets/data/gsm8k_{split}.jsonl.gz"), "rt") as fh:
        for line in fh:
            rows.append(json.loads(line)["question"])
            if len(rows) == n:
                break
    return rows


TORCH_DEVICE = "cuda"


def sync():
    if TORCH_DEVICE == "cuda":
        torch.cuda.synchronize()


def hf_tree(model, tok, prompts, branch=4, child=48, rollout=128):
    """One generate() per level over every open branch."""
    def gen(seqs, new, n_ret):
        width = max(len(s) for s in seqs)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=TORCH_DEVICE)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=TORCH_DEVICE)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=n_ret,
                             pad_token_id=pad)
        return [list(seqs[i // n_ret]) + out[i, width:].tolist() for i in range(out.shape[0])]
    level1 = gen(prompts, child, branch)
    level2 = gen(level1, child, branch)
    gen(level2, rollout, 1)


def hf_decode(model, ids_list, new):
    width = max(len(s) for s in ids_list)
    ids = torch.tensor([s[:width] for s in ids_list], device=TORCH_DEVICE)
    out = model(input_ids=ids, use_cache=True)
    past = out.past_key_values
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    sync()
    t0 = time.perf_counter()
    for _ in range(new):
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    sync()
    return time.perf_counter() - t0


def run(cmd, env=None):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return out.stdout


def main():
    global TORCH_DEVICE
    ap = argparse.ArgumentParser()
    ap.add_argument("--orchard", default=os.path.join(ROOT, "target/release/orchard"))
    ap.add_argument("--config", default=os.path.join(ROOT, ".gpu/smol-config"))
    ap.add_argument("--model-dir", default="/tmp/smol-random")
    ap.add_argument("--device", default="cuda", help="Orchard's --device (cpu-candle: a dry run without a GPU)")
    ap.add_argument("--preset", default="full")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes (a dry run)")
    ap.add_argument("--tests", metavar="BIN", help="the engine's test binary built with --features cuda")
    ap.add_argument("--export-config", metavar="GGUF",
                    help="write --config from this GGUF and exit (do this where the GGUF is, before the GPU run)")
    args = ap.parse_args()
    if args.export_config:
        export_config(args.export_config, args.config)
        return
    TORCH_DEVICE = "cuda" if args.device.startswith("cuda") else "cpu"
    model_dir = make_model(args.config, args.model_dir)
    batches = (1, 4) if args.quick else (1, 16, 64, 256)
    new_tokens = 8 if args.quick else 32
    preset = "small" if args.quick else args.preset
    repeat = 1 if args.quick else args.repeat
    res = {"device": args.device, "gpu": torch.cuda.get_device_name(0) if TORCH_DEVICE == "cuda" else None,
           "preset": preset}
    dev = ["--device", args.device]

    def bench(*extra):
        cmd = [args.orchard, "bench", *dev, "--model", model_dir, "--repeat", str(repeat), *extra]
        line = run(cmd).strip().splitlines()[-1]
        print(line, flush=True)
        return json.loads(line)

    # 1. Parity.
    f32 = bench("--dtype", "f32", "--batch", "1", "--new-tokens", "4")
    res["f32_max_abs_logprob_diff"] = f32["max_abs_logsoftmax_diff_vs_cpu_f32"]
    res["f32_parity_ok"] = f32["parity_within_bound"]
    # 2. Greedy tokens on the parity set.
    with tempfile.TemporaryDirectory() as tmp:
        prompts = os.path.join(tmp, "p.jsonl")
        with open(prompts, "w") as fh:
            for q in gsm8k_questions(4 if args.quick else 16):
                fh.write(json.dumps({"prompt": q}) + "\n")
        gen = [args.orchard, "generate", "--model", model_dir, "--prompts", prompts, "--temperature", "0",
               "--max-new-tokens", str(new_tokens), "--ignore-eos", "--precision", "f32"]
        cpu = [json.loads(l)["token_ids"] for l in run(gen).splitlines() if l.strip()]
        on = [json.loads(l)["token_ids"] for l in run(gen + dev + ["--dtype", "f32"]).splitlines() if l.strip()]
    res["greedy_identical"] = sum(a == b for a, b in zip(cpu, on))
    res["greedy_sequences"] = len(cpu)
    # 3. The device tests on the device.
    if args.tests:
        env = dict(os.environ, ORCHARD_TEST_DEVICE=args.device)
        out = subprocess.run([args.tests, "device::", "--skip", "default_model"], capture_output=True, text=True,
                             env=env)
        res["device_tests_passed"] = out.returncode == 0
        res["device_tests_tail"] = out.stdout.strip().splitlines()[-1:] if out.stdout else out.stderr[-500:]
    # 4. Speed, bf16.
    o = bench("--dtype", "bf16", "--batch", ",".join(map(str, batches)), "--new-tokens", str(new_tokens))
    res["bf16_max_abs_logprob_diff_likely"] = o["max_abs_logprob_diff_likely_vs_cpu_f32"]
    res["bf16_parity_ok"] = o["parity_within_bound"]
    keys = ["prefill_tok_per_s"] + [f"decode_b{b}_tok_per_s" for b in batches]
    for k in keys:
        res["orchard_" + k] = o[k]
    if not args.quick:
        t = bench("--dtype", "bf16", "--tree", preset)
        res["orchard_tree_tok_per_s"], res["orchard_tree_seconds"] = t["tok_per_s"], t["seconds"]
        res["orchard_tree_prefix_hit_rate"] = t["prefix_hit_rate"]

    # 5a. A GSM8K search job end to end on the device (load, search, rewards, Parquet), its tokens counted.
    n_tasks = 2 if args.quick else 32
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "search")
        cmd = [args.orchard, "search", "--algo", "mcts", "--task", "gsm8k", "--split", "test", "--limit", str(n_tasks),
               "--reward", "gsm8k", "--model", model_dir, *dev, "--dtype", "bf16", "--max-new-tokens", "64",
               "--out", out]
        if args.quick:
            cmd += ["--iterations", "2"]
        t0 = time.perf_counter()
        run(cmd)
        wall = time.perf_counter() - t0
        with open(os.path.join(out, "search_metrics.json")) as fh:
            m = json.load(fh)
    res["orchard_search_tasks"] = n_tasks
    res["orchard_search_generated_tokens"] = m["search/generated_tokens"]
    res["orchard_search_wall_s"] = wall
    res["orchard_search_tok_per_s"] = m["search/generated_tokens"] / wall

    tok = AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.bfloat16
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=dtype).to(TORCH_DEVICE).eval()
    n_prompts = {"small": 4, "full": 16}[preset]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
               for q in gsm8k_questions(n_prompts)]
    prompts = [list(p["input_ids"]) if hasattr(p, "keys") else list(p) for p in prompts]
    base = tok(" ".join(gsm8k_questions(40)))["input_ids"]  # 200-token windows at offsets 0..255
    with torch.inference_mode():
        ids = torch.tensor([base[:200]], device=TORCH_DEVICE)
        model(input_ids=ids)
        times = []
        for _ in range(repeat):
            sync()
            t0 = time.perf_counter()
            model(input_ids=ids)
            sync()
            times.append(time.perf_counter() - t0)
        res["hf_prefill_tok_per_s"] = 200 / statistics.median(times)
        for b in batches:
            seqs = [base[i:i + 200] for i in range(b)]
            hf_decode(model, seqs, 2)
            t = statistics.median(hf_decode(model, seqs, new_tokens) for _ in range(repeat))
            res[f"hf_decode_b{b}_tok_per_s"] = b * new_tokens / t
        times = []
        for i in range(0 if args.quick else repeat + 1):
            torch.manual_seed(0)
            sync()
            t0 = time.perf_counter()
            hf_tree(model, tok, prompts)
            sync()
            if i > 0:  # run 0 warms up
                times.append(time.perf_counter() - t0)
        # 5b. transformers best-of-N on the same GSM8K test questions at the same number of generated tokens: N
        # samples of 64 tokens per question (EOS held off so every sample has them), 64 sequences per generate().
        qs = gsm8k_questions(n_tasks, "test")
        per_q = max(1, round(res["orchard_search_generated_tokens"] / (64 * n_tasks)))
        seqs = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True) for q in qs]
        seqs = [list(p["input_ids"]) if hasattr(p, "keys") else list(p) for p in seqs]
        todo = [s for s in seqs for _ in range(per_q)]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        sync()
        t0 = time.perf_counter()
        for i in range(0, len(todo), 64):
            batch = todo[i:i + 64]
            width = max(len(s) for s in batch)
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in batch], device=TORCH_DEVICE)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in batch], device=TORCH_DEVICE)
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=64, min_new_tokens=64, do_sample=True,
                           temperature=1.0, top_k=0, top_p=1.0, pad_token_id=pad)
        sync()
        hf_wall = time.perf_counter() - t0
        res["hf_best_of_n_samples_per_question"] = per_q
        res["hf_best_of_n_generated_tokens"] = len(todo) * 64
        res["hf_best_of_n_tok_per_s"] = len(todo) * 64 / hf_wall
        res["ratio_search_vs_best_of_n_tok_per_s"] = res["orchard_search_tok_per_s"] / res["hf_best_of_n_tok_per_s"]
    if times:
        tokens = n_prompts * (4 * 48 + 16 * 48 + 16 * 128)
        res["hf_tree_seconds"] = statistics.median(times)
        res["hf_tree_tok_per_s"] = tokens / res["hf_tree_seconds"]
        keys.append("tree_tok_per_s")
    for k in keys:
        res["ratio_" + k] = res["orchard_" + k] / res["hf_" + k]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
