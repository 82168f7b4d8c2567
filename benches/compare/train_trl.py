"""Orchard's `orchard train` against TRL's DPOTrainer on torch CPU, in one run, on the same work.

Both sides train the default model (SmolLM2-135M-Instruct, dequantized to f32 by `orchard convert`: the same
weights) with DPO (sigmoid, beta 0.1) on the same 64 GSM8K pairs, 4 pairs per optimizer step, no gradient
accumulation, AdamW, lr 5e-6 (LoRA: 5e-5), in two modes: LoRA r=16 alpha=32 on all seven linear layers, and full
fine-tuning. Reference log-probs are precomputed once on both sides (TRL: `precompute_ref_log_probs=True`;
Orchard computes and caches them before its first step), so a step is policy forward + backward + update.

Pairs: prompt = a GSM8K train question rendered with the model's chat template (standard form, the same text on
both sides), chosen = its reference solution, rejected = the reference solution of the next question. TRL appends
EOS to chosen/rejected; Orchard's terminal pairs get the same EOS.

Measured: seconds per optimizer step (median of the steps after the first, which both sides spend warming up),
and each process's peak RSS (wait4). Threads: both use every core of the machine (torch.set_num_threads,
RAYON_NUM_THREADS). Ends with one JSON line.

Usage (from the repository root; builds nothing: pass the orchard binary):
    /work/refenv/bin/python benches/compare/train_trl.py --orchard target/release/orchard [--steps 4]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

GSM8K = "/work/shared/data/gsm8k_train.jsonl"
N_PAIRS = 64
BATCH = 4
MAX_LENGTH = 512
BETA = 0.1
LORA_R, LORA_ALPHA = 16, 32
LR = {"lora": 5e-5, "full": 5e-6}


def make_pairs(model_dir, path):
    """The 64 pairs, written as standard-form Parquet (prompt already templated)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in open(GSM8K)][: N_PAIRS + 1]
    prompts, chosen, rejected = [], [], []
    for i in range(N_PAIRS):
        msgs = [{"role": "user", "content": rows[i]["question"]}]
        prompts.append(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
        chosen.append(rows[i]["answer"])
        rejected.append(rows[i + 1]["answer"])
    # zstd: Orchard's Parquet reader is built with zstd, not snappy (pyarrow's default).
    pq.write_table(pa.table({"prompt": prompts, "chosen": chosen, "rejected": rejected}), path, compression="zstd")


def peak_rss_of(cmd, env=None):
    """Runs cmd under wait4 and returns (stdout, stderr, peak RSS GB)."""
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({code})")
    return out, err, ru.ru_maxrss / 1e6  # KiB -> GB


def worker_trl(mode, model_dir, pairs, steps):
    """Child process: TRL DPOTrainer for `steps` optimizer steps; prints {"step_s": [...]}."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(os.cpu_count())
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ds = load_dataset("parquet", data_files=pairs, split="train")
    peft_config = None
    if mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        )
    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(
            output_dir=out, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, max_steps=steps,
            learning_rate=LR[mode], beta=BETA, max_length=MAX_LENGTH, loss_type=["sigmoid"],
            precompute_ref_log_probs=True, precompute_ref_batch_size=BATCH, use_cpu=True, report_to="none",
            logging_steps=1, save_strategy="no", dataloader_num_workers=0, seed=0, lr_scheduler_type="constant",
            max_grad_norm=1.0, weight_decay=0.0,
        )
        trainer = DPOTrainer(
            model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_config, callbacks=[Clock()]
        )
        trainer.train()
    print(json.dumps({"step_s": times}))


def orchard(binary, mode, model_dir, pairs, steps, work):
    out = os.path.join(work, f"orchard-{mode}")
    cmd = [binary, "train", "--model", model_dir, "--pairs", pairs, "--loss", "dpo", "--beta", str(BETA),
           "--lr", str(LR[mode]), "--epochs", "1", "--batch-size", str(BATCH), "--max-steps", str(steps),
           "--schedule", "constant", "--max-length", str(MAX_LENGTH), "--no-export", "--out", out]
    if mode == "lora":
        cmd += ["--lora-rank", str(LORA_R), "--lora-alpha", str(LORA_ALPHA)]
    env = dict(os.environ, RAYON_NUM_THREADS=str(os.cpu_count()))
    _, _, rss = peak_rss_of(cmd, env)
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return [r["seconds"] for r in rows], rss, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--orchard", help="the orchard binary")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--modes", default="lora,full")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--pairs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_trl(args.worker, args.model_dir, args.pairs, args.steps)
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as work:
        model_dir = os.path.join(work, "smollm2-f32")
        subprocess.run([args.orchard, "convert", "--model", "default", "--out", model_dir], check=True)
        pairs = os.path.join(work, "pairs.parquet")
        make_pairs(model_dir, pairs)
        result = {"machine": f"{os.cpu_count()} CPUs", "pairs": N_PAIRS, "batch": BATCH, "max_length": MAX_LENGTH,
                  "steps": args.steps}
        for mode in args.modes.split(","):
            o_steps, o_rss, rows = orchard(args.orchard, mode, model_dir, pairs, args.steps, work)
            out, _, t_rss = peak_rss_of([sys.executable, __file__, "--worker", mode, "--model-dir", model_dir,
                                         "--pairs", pairs, "--steps", str(args.steps)])
            t_steps = json.loads(out.strip().splitlines()[-1])["step_s"]
            assert t_steps, "TRL reported no optimizer steps"
            o_med = statistics.median(o_steps[1:] or o_steps)
            t_med = statistics.median(t_steps[1:] or t_steps)
            result[mode] = {
                "orchard_s_per_step": round(o_med, 3), "trl_s_per_step": round(t_med, 3),
                "speedup_orchard_vs_trl": round(t_med / o_med, 3),
                "orchard_peak_rss_gb": round(o_rss, 2), "trl_peak_rss_gb": round(t_rss, 2),
                "orchard_steps_s": [round(x, 2) for x in o_steps], "trl_steps_s": [round(x, 2) for x in t_steps],
                "orchard_tokens_per_step": rows[-1]["tokens"],
            }
            print(f"{mode}: {json.dumps(result[mode])}", file=sys.stderr, flush=True)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
