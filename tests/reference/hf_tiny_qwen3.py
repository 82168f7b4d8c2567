"""Reference values from HF transformers for a tiny random Qwen3 (per-head q/k RMSNorm, head_dim 32 on a width of
64, GQA 4/2, tied embedding), written by the engine's own test helper (`orchard_engine::testing::tiny_config(Qwen3)`
+ `random_weights(cfg, 31)`, safetensors + config.json), so both sides read the same weights.

Writes tests/reference/hf_tiny_qwen3.json: for each prompt (token ids; one longer than 300 tokens), the full
log-softmax of the last position and of the middle position, which engine/tests/reference.rs compares against
(≤ 1e-3). Run once after writing the directory:

    ORCHARD_WRITE_TINY_QWEN3=/tmp/tiny-qwen3 cargo test --release -p orchard-engine --test tests qwen3
    python tests/reference/hf_tiny_qwen3.py /tmp/tiny-qwen3
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
    model_dir = sys.argv[1]
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    assert model.config.model_type == "qwen3", model.config.model_type
    cases = []
    with torch.no_grad():
        for ids in PROMPTS:
            logits = model(torch.tensor([ids])).logits[0].double()
            lsm = torch.log_softmax(logits, dim=-1)
            mid = len(ids) // 2
            cases.append({"ids": ids, "mid": mid, "last": lsm[-1].tolist(), "middle": lsm[mid].tolist()})
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_tiny_qwen3.json")
    with open(out, "w") as f:
        json.dump({"transformers": __import__("transformers").__version__, "cases": cases}, f)
    print("wrote", out)


if __name__ == "__main__":
    main()
