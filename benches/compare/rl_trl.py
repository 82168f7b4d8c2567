"""Orchard's `orchard rl` against TRL's GRPOTrainer on torch CPU, in one run, on the same work.

Both sides train the default model (SmolLM2-135M-Instruct, dequantized to f32 by `orchard convert`: the same
weights) with GRPO on the same 8 GSM8K train prompts per step (chat-templated the same way), G = 8 completions per
prompt, at most 128 new tokens at temperature 1, the same reward (1 when the completion's final number — after
`####`, else after "the answer is", else the last number — equals the reference, 0.1 when a number was found but is
wrong (ReFT's partial credit, as Orchard's `gsm8k` reward), else 0), lr 1e-6 (LoRA 1e-5),
AdamW, clip ε 0.2, the "grpo" loss, one optimizer step per batch (μ = 1), in the modes asked for: LoRA r=16
alpha=32 on all seven linear layers, or full fine-tuning, each with β = 0 and/or β = 0.04 (KL to the start).

TRL samples with HF `generate` on the policy itself (no vLLM on CPU); Orchard samples with its engine on the same
weights handed over in memory (Q8_0). Measured: seconds per optimizer step (median of the steps after the first),
and the split of a step into generation (TRL: `_generate_and_score_completions`; Orchard: sampling + scoring, plus
the weight hand-off) and training; each process's peak RSS (wait4). Threads: all cores on both sides. Ends with one
JSON line.

Usage (from the repository root; builds nothing: pass the orchard binary):
    /work/refenv/bin/python benches/compare/rl_trl.py --orchard target/release/orchard [--steps 3]
        [--modes lora-b0,full-b0.04] [--noskip]
"""
import argparse
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

GSM8K = os.path.join(os.path.dirname(__file__), "../../datasets/data/gsm8k_train.jsonl.gz")
P, G, MAX_NEW = 8, 8, 128
LR = {"lora": 1e-5, "full": 1e-6}
LORA_R, LORA_ALPHA = 16, 32


def final_number(text):
    """The reward's extraction: `#### N`, else "the answer is N", else the last number."""
    for pat in (r"####\s*(-?[\d,]*\.?\d+)", r"(?i)the answer is[:\s]*\$?(-?[\d,]*\.?\d+)"):
        m = re.findall(pat, text)
        if m:
            return m[-1].replace(",", "")
    m = re.findall(r"-?[\d,]*\.?\d+", text)
    return m[-1].replace(",", "") if m else None


def reward_fn(completions, answer, **kw):
    out = []
    for c, a in zip(completions, answer):
        text = c if isinstance(c, str) else c[-1]["content"]
        got = final_number(text)
        try:
            if got is None:
                out.append(0.0)
            else:
                out.append(1.0 if abs(float(got) - float(a)) <= 1e-2 else 0.1)
        except ValueError:
            out.append(0.0)
    return out


def rows(steps):
    """The prompts of `steps` steps (P per step, in order) with their numeric answers."""
    data = [json.loads(line) for line in gzip.open(GSM8K, "rt")][: P * steps]
    return [{"question": r["question"], "answer": r["answer"].split("####")[-1].strip().replace(",", "")} for r in data]


def peak_rss_of(cmd, env=None):
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"{' '.join(cmd[:3])} failed")
    return out, err, ru.ru_maxrss / 1e6


def worker_trl(mode, beta, model_dir, steps):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(os.cpu_count())
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"]}
                            for r in rows(steps)])
    peft_config = None
    if mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"])
    step_s, gen_s = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_s.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(
            output_dir=out, per_device_train_batch_size=P * G, num_generations=G, gradient_accumulation_steps=1,
            max_completion_length=MAX_NEW, temperature=1.0, max_steps=steps, learning_rate=LR[mode], beta=beta,
            epsilon=0.2, loss_type="grpo", num_iterations=1, use_cpu=True, report_to="none", logging_steps=1,
            save_strategy="no", seed=0, lr_scheduler_type="constant", max_grad_norm=1.0, weight_decay=0.0,
            dataloader_num_workers=0, shuffle_dataset=False,
        )
        trainer = GRPOTrainer(model=model, args=cfg, train_dataset=ds, reward_funcs=[reward_fn],
                              processing_class=tok, peft_config=peft_config, callbacks=[Clock()])
        inner = trainer._generate_and_score_completions

        def timed(*a, **k):
            t = time.perf_counter()
            r = inner(*a, **k)
            gen_s.append(time.perf_counter() - t)
            return r

        trainer._generate_and_score_completions = timed
        trainer.train()
        zero = [h["frac_reward_zero_std"] for h in trainer.state.log_history if "frac_reward_zero_std" in h]
    print(json.dumps({"step_s": step_s, "gen_s": gen_s, "frac_reward_zero_std": zero}))


def orchard(binary, mode, beta, model_dir, steps, work, skip=True):
    tasks = os.path.join(work, "prompts.jsonl")
    with open(tasks, "w") as f:
        for i, r in enumerate(rows(steps)):
            f.write(json.dumps({"id": f"gsm8k-{i}", "prompt": r["question"], "reference": r["answer"]}) + "\n")
    out = os.path.join(work, f"orchard-{mode}-{beta}-{skip}")
    lora = f"lora_rank = {LORA_R}\nlora_alpha = {LORA_ALPHA}\n" if mode == "lora" else ""
    cfg = os.path.join(work, f"rl-{mode}-{beta}-{skip}.toml")
    with open(cfg, "w") as f:
        f.write(f"""model = "{model_dir}"
reward = "gsm8k"
steps = {steps}
prompts_per_step = {P}
group_size = {G}
lr = {LR[mode]}
beta = {beta}
epsilon_low = 0.2
epsilon_high = 0.2
checkpoint_every = 0
skip_zero_advantage = {str(skip).lower()}
{lora}
[prompts]
task = "jsonl"
path = "{tasks}"
fields = {{ reference = "reference" }}

[sampling]
temperature = 1.0
max_new_tokens = {MAX_NEW}
""")
    env = dict(os.environ, RAYON_NUM_THREADS=str(os.cpu_count()))
    _, _, rss = peak_rss_of([binary, "rl", "--config", cfg, "--out", out], env)
    steps_ = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    shutil.rmtree(out)  # final/ is the whole model in f32: do not let the runs fill the disk
    return steps_, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--orchard", help="the orchard binary")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--modes", default="lora-b0,lora-b0.04,full-b0,full-b0.04")
    ap.add_argument("--noskip", action="store_true",
                    help="also run Orchard with skip_zero_advantage = false (every group's forward and backward run, "
                         "as TRL does) and report it beside the default")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--beta", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_trl(args.worker, args.beta, args.model_dir, args.steps)
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as work:
        model_dir = os.path.join(work, "smollm2-f32")
        subprocess.run([args.orchard, "convert", "--model", "default", "--out", model_dir], check=True)
        result = {"machine": f"{os.cpu_count()} CPUs", "prompts_per_step": P, "group": G, "max_new_tokens": MAX_NEW,
                  "steps": args.steps}
        for spec in args.modes.split(","):
            mode, beta = spec.split("-b")
            beta = float(beta)
            o_steps, o_rss = orchard(args.orchard, mode, beta, model_dir, args.steps, work)
            out, _, t_rss = peak_rss_of([sys.executable, __file__, "--worker", mode, "--beta", str(beta),
                                         "--model-dir", model_dir, "--steps", str(args.steps)])
            t = json.loads(out.strip().splitlines()[-1])
            skip = lambda v: v[1:] or v  # noqa: E731  (the first step warms up on both sides)
            o_total = [s["seconds_sampling"] + s["seconds_training"] + s["seconds_handoff"] for s in o_steps]
            o_med, t_med = statistics.median(skip(o_total)), statistics.median(skip(t["step_s"]))
            result[spec] = {
                "orchard_s_per_step": round(o_med, 2), "trl_s_per_step": round(t_med, 2),
                "speedup_orchard_vs_trl": round(t_med / o_med, 2),
                "orchard_generation_s": round(statistics.median(skip([s["seconds_sampling"] + s["seconds_handoff"] for s in o_steps])), 2),
                "orchard_training_s": round(statistics.median(skip([s["seconds_training"] for s in o_steps])), 2),
                "orchard_handoff_s": round(statistics.median(skip([s["seconds_handoff"] for s in o_steps])), 3),
                "trl_generation_s": round(statistics.median(skip(t["gen_s"])), 2),
                "trl_training_s": round(t_med - statistics.median(skip(t["gen_s"])), 2),
                "orchard_peak_rss_gb": round(o_rss, 2), "trl_peak_rss_gb": round(t_rss, 2),
                "orchard_reward": [round(s["reward"], 3) for s in o_steps],
                "orchard_frac_reward_zero_std": [round(s["frac_reward_zero_std"], 3) for s in o_steps],
                "orchard_groups_skipped": [s.get("groups_skipped", 0) for s in o_steps],
                "trl_frac_reward_zero_std": [round(z, 3) for z in t.get("frac_reward_zero_std", [])],
            }
            if args.noskip:
                n_steps, _ = orchard(args.orchard, mode, beta, model_dir, args.steps, work, skip=False)
                n_med = statistics.median(skip([s["seconds_sampling"] + s["seconds_training"] + s["seconds_handoff"]
                                                for s in n_steps]))
                result[spec]["orchard_noskip_s_per_step"] = round(n_med, 2)
                result[spec]["orchard_noskip_training_s"] = round(
                    statistics.median(skip([s["seconds_training"] for s in n_steps])), 2)
                result[spec]["speedup_orchard_noskip_vs_trl"] = round(t_med / n_med, 2)
            print(f"{spec}: {json.dumps(result[spec])}", file=sys.stderr, flush=True)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
