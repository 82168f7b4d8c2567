"""Checks Orchard's exports against transformers and PEFT.

1. The PEFT adapter written by `orchard train --lora-rank R` loads with `peft.PeftModel.from_pretrained` on the base
   model written by `orchard convert` (the same f32 weights Orchard trained on).
2. The merged HF directory written by `orchard train` loads with `transformers.AutoModelForCausalLM`.
3. Numbers: max |Δlogit| between PEFT (base + adapter) and transformers on the merged directory, over every
   position and the whole vocabulary; and max |Δ log-prob| per completion token between PEFT and `orchard score`
   on the merged directory (Orchard's f32 path).

Run (values recorded in NOTES-train.md):
    /work/refenv/bin/python tests/python/peft_check.py --orchard target/release/orchard \
        --base BASE_HF_DIR --adapter OUT/adapter --merged OUT/merged
Prints one JSON line; exits 1 if a difference exceeds 1e-3.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXTS = [
    ("Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
     "How many clips did Natalia sell altogether in April and May?\nAnswer:",
     " In May she sold 48 / 2 = 24 clips. Altogether she sold 48 + 24 = 72 clips. The answer is 72."),
    ("<|im_start|>user\nWhat is 17 times 3?<|im_end|>\n<|im_start|>assistant\n", "17 times 3 is 51.<|im_end|>"),
    ("def fib(n):\n", "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--orchard", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--merged", required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(args.base)
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, args.adapter).eval()
    merged = AutoModelForCausalLM.from_pretrained(args.merged, dtype=torch.float32).eval()

    # Orchard's per-token log-probs on the merged directory (raw prompts: no chat template).
    with tempfile.TemporaryDirectory() as d:
        inp = os.path.join(d, "in.jsonl")
        with open(inp, "w") as f:
            for p, c in TEXTS:
                f.write(json.dumps({"prompt": p, "completion": c}) + "\n")
        out = subprocess.run([args.orchard, "score", "--model", args.merged, "--raw", "--input", inp],
                             check=True, capture_output=True, text=True).stdout
        orchard_rows = [json.loads(line) for line in out.splitlines() if line.strip()]

    max_logit, max_logp, max_adapter_effect, tokens = 0.0, 0.0, 0.0, 0
    for (p, c), row in zip(TEXTS, orchard_rows):
        ids_p = tok(p, add_special_tokens=False)["input_ids"]
        ids_c = tok(c, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ids_p + ids_c])
        with torch.no_grad():
            lp = peft_model(ids).logits[0]
            lm = merged(ids).logits[0]
            with peft_model.disable_adapter():
                lb = peft_model(ids).logits[0]
        max_logit = max(max_logit, (lp - lm).abs().max().item())
        max_adapter_effect = max(max_adapter_effect, (lp - lb).abs().max().item())
        logp = torch.log_softmax(lp, dim=-1)
        rows = torch.arange(len(ids_p) - 1, len(ids_p) + len(ids_c) - 1)
        peft_tok = logp[rows, torch.tensor(ids_c)]
        orch_tok = torch.tensor(row["token_logprobs"], dtype=torch.float32)
        assert len(orch_tok) == len(ids_c), (len(orch_tok), len(ids_c))
        max_logp = max(max_logp, (peft_tok - orch_tok).abs().max().item())
        tokens += len(ids_c)
    result = {
        "peft_vs_merged_transformers_max_abs_logit": max_logit,
        "peft_vs_orchard_max_abs_token_logprob": max_logp,
        "adapter_effect_max_abs_logit": max_adapter_effect,
        "completion_tokens": tokens,
        "texts": len(TEXTS),
    }
    print(json.dumps(result))
    ok = max_logit <= 1e-3 and max_logp <= 1e-3 and max_adapter_effect > 1e-3
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
