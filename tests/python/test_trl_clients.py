"""TRL as a real client of the `orchard` Python package (issue 17): GRPOTrainer scores its completions with
`orchard.rewards.gsm8k`, and DPOTrainer trains on `orchard.sample(...).pairs(as_dataset=True)`.

Both train a tiny random Llama (2 layers, width 64) that uses the default model's tokenizer (written by `orchard
convert`), on CPU, for 2 steps: the point is the interface (signatures, columns, formats), not the learning.
.ci/run installs torch, transformers and trl into its venv; these tests fail when they are missing.
"""
import math
import os
import subprocess
from pathlib import Path

import pytest

import orchard

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"
ORCHARD = Path(os.environ.get("ORCHARD_BIN", TARGET / "orchard"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer and chat template, as an HF directory."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    work = tmp_path_factory.mktemp("tiny")
    hf = work / "smollm2"
    r = subprocess.run([str(ORCHARD), "convert", "--model", "default", "--out", str(hf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    tok = AutoTokenizer.from_pretrained(hf)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    out = work / "tiny"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_grpo_trainer_uses_orchard_rewards(tiny, tmp_path):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    rows = [
        {"prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}], "answer": f"#### {a + b}"}
        for a, b in [(2, 3), (4, 5), (10, 7), (6, 6)]
    ]
    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    cfg = GRPOConfig(
        output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=4,
        gradient_accumulation_steps=1, max_completion_length=12, max_steps=2, learning_rate=1e-4, beta=0.0,
        use_cpu=True, report_to="none", logging_steps=1, save_strategy="no", seed=0, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model, args=cfg, train_dataset=Dataset.from_list(rows), reward_funcs=[orchard.rewards.gsm8k],
        processing_class=tok,
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    print("GRPO log:", logs)
    assert trainer.state.global_step == 2
    # TRL called Orchard's reward by its name each step and logged its scores (a random model's completions carry
    # no matching number: real scores of 0, not failed rows).
    assert len(logs) == 2 and all(h["rewards/gsm8k/mean"] == 0.0 for h in logs), logs
    assert all(math.isfinite(h["loss"]) for h in logs)


def test_dpo_trainer_trains_on_orchard_pairs(tiny, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    run = orchard.sample(
        {"source": {"task": "gsm8k", "split": "train", "limit": 5}, "n": 8, "reward": "gsm8k",
         "sampling": {"temperature": 0.7, "max_new_tokens": 256}},  # the README quick-start job: 7 pairs
        out=tmp_path / "pairs",
    )
    ds = run.pairs(as_dataset=True)
    assert len(ds) >= 2, f"{len(ds)} pairs"
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    cfg = DPOConfig(
        output_dir=str(tmp_path / "dpo"), per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=2,
        learning_rate=1e-4, beta=0.1, max_length=256, use_cpu=True, report_to="none", logging_steps=1,
        save_strategy="no", seed=0, dataloader_num_workers=0,
    )
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    print("DPO log:", logs)
    assert trainer.state.global_step == 2
    assert all(math.isfinite(h["loss"]) for h in logs)
    # Two steps of DPO from a random start: the first loss is log 2 (policy == reference).
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
