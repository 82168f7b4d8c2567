"""Orchard on CUDA (`--features cuda`) beside PyTorch `transformers.generate`, in one run on one GPU: prefill and
decode throughput (issue 2) and the tree workload (issue 3) with the same shapes, plus Orchard's CUDA numerics
against its own CPU f32 path.

The GPU machine has no network and the default GGUF (98 MB) is over the transfer limit, so both sides load the same
HF directory: SmolLM2-135M-Instruct's exact config and tokenizer (exported from the GGUF with transformers) and
random weights drawn here (`torch.manual_seed(0)`, the model's own initialiser), saved as f32 safetensors. Shapes,
not weights, set the speed.

    python benches/compare/cuda_tree_hf.py --orchard PATH/TO/orchard --config .gpu/smol-config [--preset full]

Tree workload (both sides, bf16, temperature 1, EOS ignored): P GSM8K prompts, chat-templated; 4 children × 48
tokens each, 4 grandchildren × 48 per child, one 128-token rollout per grandchild. transformers: one
`generate(num_return_sequences=4)` per level over every open branch (left-padded; each level re-prefills its
prefixes — HF's cache does not outlive a call). Orchard: every level decodes in one lockstep batch; children fork
their parent's KV on the device. Ends with one JSON line.
"""
import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
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


def gsm8k_questions(n):
    rows = []
    with gzip.open(os.path.join(ROOT, "datasets/data/gsm8k_train.jsonl.gz"), "rt") as fh:
        for line in fh:
            rows.append(json.loads(line)["question"])
            if len(rows) == n:
                break
    return rows


def sync():
    torch.cuda.synchronize()


def hf_tree(model, tok, prompts, branch=4, child=48, rollout=128):
    """One generate() per level over every open branch."""
    def gen(seqs, new, n_ret):
        width = max(len(s) for s in seqs)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device="cuda")
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device="cuda")
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=n_ret,
                             pad_token_id=pad)
        return [list(seqs[i // n_ret]) + out[i, width:].tolist() for i in range(out.shape[0])]
    level1 = gen(prompts, child, branch)
    level2 = gen(level1, child, branch)
    gen(level2, rollout, 1)


def hf_decode(model, ids_list, new):
    width = max(len(s) for s in ids_list)
    ids = torch.tensor([s[:width] for s in ids_list], device="cuda")
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--orchard", default=os.path.join(ROOT, "target/release/orchard"))
    ap.add_argument("--config", default=os.path.join(ROOT, ".gpu/smol-config"))
    ap.add_argument("--model-dir", default="/tmp/smol-random")
    ap.add_argument("--preset", default="full")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--export-config", metavar="GGUF",
                    help="write --config from this GGUF and exit (do this where the GGUF is, before the GPU run)")
    args = ap.parse_args()
    if args.export_config:
        export_config(args.export_config, args.config)
        return
    model_dir = make_model(args.config, args.model_dir)
    res = {"gpu": torch.cuda.get_device_name(0), "preset": args.preset}

    def orchard(*extra):
        cmd = [args.orchard, "bench", "--device", "cuda", "--model", model_dir, "--repeat", str(args.repeat), *extra]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
        print(out.stdout.strip().splitlines()[-1], flush=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    f32 = orchard("--dtype", "f32", "--batch", "1")
    res["orchard_f32_max_abs_logsoftmax_diff_vs_cpu"] = f32["max_abs_logsoftmax_diff_vs_cpu_f32"]
    o = orchard("--dtype", "bf16", "--batch", "1,16,64", "--tree", args.preset)
    res["orchard_bf16_max_abs_logsoftmax_diff_vs_cpu"] = o["max_abs_logsoftmax_diff_vs_cpu_f32"]
    for k in ("prefill_tok_per_s", "decode_b1_tok_per_s", "decode_b16_tok_per_s", "decode_b64_tok_per_s",
              "tree_tok_per_s", "tree_seconds"):
        res["orchard_" + k] = o[k]

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16).cuda().eval()
    n_prompts = {"small": 4, "full": 16}[args.preset]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
               for q in gsm8k_questions(n_prompts)]
    prompts = [list(p["input_ids"]) if hasattr(p, "keys") else list(p) for p in prompts]
    base = tok(" ".join(gsm8k_questions(20)))["input_ids"]  # 200-token windows at offsets 0..63
    with torch.inference_mode():
        # Prefill: one 200-token prompt.
        ids = torch.tensor([base[:200]], device="cuda")
        model(input_ids=ids)
        times = []
        for _ in range(args.repeat):
            sync()
            t0 = time.perf_counter()
            model(input_ids=ids)
            sync()
            times.append(time.perf_counter() - t0)
        res["hf_prefill_tok_per_s"] = 200 / statistics.median(times)
        for b in (1, 16, 64):
            seqs = [base[i:i + 200] for i in range(b)]
            hf_decode(model, seqs, 4)
            t = statistics.median(hf_decode(model, seqs, 32) for _ in range(args.repeat))
            res[f"hf_decode_b{b}_tok_per_s"] = b * 32 / t
        torch.manual_seed(0)
        hf_tree(model, tok, prompts)  # warm-up
        times = []
        for _ in range(args.repeat):
            sync()
            t0 = time.perf_counter()
            hf_tree(model, tok, prompts)
            sync()
            times.append(time.perf_counter() - t0)
    p = n_prompts
    tokens = p * (4 * 48 + 16 * 48 + 16 * 128)
    res["hf_tree_seconds"] = statistics.median(times)
    res["hf_tree_tok_per_s"] = tokens / res["hf_tree_seconds"]
    for k in ("prefill_tok_per_s", "decode_b1_tok_per_s", "decode_b16_tok_per_s", "decode_b64_tok_per_s",
              "tree_tok_per_s"):
        res["ratio_" + k] = res["orchard_" + k] / res["hf_" + k]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
