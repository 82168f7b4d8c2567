"""Reference values from HF transformers for the tiny random models of the architectures the engine adds beyond
llama — Phi-3 (the generic candle-transformers backend's architecture: fused qkv/gate_up, untied head), Qwen3 (per-head q/k RMSNorm, head_dim 32 on a width of 64, GQA 4/2, tied embedding) and Gemma 3 (the same
plus √width embedding scale, norms before and after both blocks stored as offsets from one, GeGLU, a 16-position
sliding-window first layer with rotary base 10⁴ and a global second layer with base 10⁶, queries scaled by 24^-1/2).
The weights are written by the engine's own test helper (`orchard_engine::testing::tiny_config(ARCH)` +
`random_weights(cfg, seed)`, safetensors + config.json), so both sides read the same weights.

Writes tests/reference/hf_tiny_{ARCH}.json: for each prompt (token ids; one longer than 300 tokens), the full
log-softmax of the last position and of the middle position, and a 12-token greedy continuation of the first
prompt, which engine/tests/reference.rs compares against (≤ 1e-3; tokens equal). Run once after writing the directory:

    ORCHARD_WRITE_TINY_QWEN3=/tmp/tiny-qwen3 ORCHARD_WRITE_TINY_GEMMA3=/tmp/tiny-gemma3 \
        cargo test -p orchard-engine --test tests tiny_
    python tests/reference/hf_tiny.py qwen3 /tmp/tiny-qwen3
    python tests/reference/hf_tiny.py gemma3_text /tmp/tiny-gemma3
    python tests/reference/hf_tiny.py phi3 /tmp/tiny-phi3      # ORCHARD_WRITE_TINY_PHI3=/tmp/tiny-phi3 …
    python tests/reference/hf_tiny.py mistral /tmp/tiny-mistral   # ORCHARD_WRITE_TINY_MISTRAL=… (window 16)
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM

PROMPTS = [
    [1, 40, 77, 3, 120, 250, 9, 18, 64, 200, 2, 99],
    [5],
    [10, 11, 12, 13, 14, 15, 16, 17],
    [(i * 37 + 5) % 280 + 3 for i in range(64)],
    [(i * 53 + 11) % 280 + 3 for i in range(333)],
]


def main():
    arch, model_dir = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    assert model.config.model_type == arch, model.config.model_type
    cases = []
    with torch.no_grad():
        for ids in PROMPTS:
            logits = model(torch.tensor([ids])).logits[0].double()
            lsm = torch.log_softmax(logits, dim=-1)
            mid = len(ids) // 2
            cases.append({"ids": ids, "mid": mid, "last": lsm[-1].tolist(), "middle": lsm[mid].tolist()})
        first = PROMPTS[0]
        greedy = model.generate(torch.tensor([first]), max_new_tokens=12, do_sample=False)[0, len(first):].tolist()
    name = arch.removesuffix("_text")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"hf_tiny_{name}.json")
    with open(out, "w") as f:
        json.dump({"transformers": __import__("transformers").__version__, "cases": cases, "greedy": greedy}, f)
    print("wrote", out)


if __name__ == "__main__":
    main()
