"""Reference values for Orchard's preference losses, computed by TRL's own code on fixed log-probs.

Writes tests/reference/dpo_losses.json, which `train/src/loss/tests.rs` compares against (values and gradients
with respect to the per-pair policy log-prob sums, tolerance 1e-5).

How each loss is computed here:
- dpo (sigmoid), robust, ipo, hinge, rpo (= loss_type ["sigmoid", "sft"]): TRL's `DPOTrainer._compute_loss`, called
  unbound on a stub trainer whose "model" returns the given per-token log-probs (the fused LM head's output).
- simpo: TRL's `CPOTrainer.cpo_loss` with loss_type="simpo" (cpo_alpha 0) on average log-probs.
- orpo: TRL's `ORPOTrainer.odds_ratio_loss` on average log-probs, plus the token-mean NLL of the chosen completions
  as `ORPOTrainer.get_batch_loss_metrics` adds it (`loss = policy_nll_loss - losses.mean()`).
- cdpo: TRL >= 1.0 no longer has label smoothing on the sigmoid loss; this is TRL 0.19's `dpo_loss` sigmoid branch
  transcribed: `-F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing`.

Run (trl 1.16.0, torch 2.15, CPU):
    /work/refenv/bin/python tests/reference/dpo_losses.py
"""
import json
import os
import types
from collections import defaultdict

import torch
import torch.nn.functional as F
import trl
from trl.experimental.cpo import CPOTrainer
from trl.experimental.orpo import ORPOTrainer
from trl.trainer.dpo_trainer import DPOTrainer

torch.set_default_dtype(torch.float64)
g = torch.Generator().manual_seed(1234)
B = 6
# Completion lengths (chosen, rejected) per pair, and per-token log-probs in (-3, 0).
LEN_C = [5, 9, 3, 12, 7, 4]
LEN_R = [8, 4, 6, 10, 3, 11]
PROMPT = 2  # prompt positions (mask 0) before each completion
L = PROMPT + max(LEN_C + LEN_R)


def token_logps():
    return -3.0 * torch.rand(2 * B, L - 1, generator=g)


TOK = token_logps()
MASK = torch.zeros(2 * B, L, dtype=torch.long)
for i, n in enumerate(LEN_C + LEN_R):
    MASK[i, PROMPT : PROMPT + n] = 1
SHIFT = MASK[:, 1:]
TOK = TOK * SHIFT  # zero outside completions, as the fused LM head returns for label -100
REF_SHIFT = (torch.rand(2 * B, generator=g) - 0.5) * 6.0  # reference = policy + noise
SUMS = TOK.sum(dim=1)
REF = (SUMS + REF_SHIFT).detach()


class StubAccelerator:
    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x

    def unwrap_model(self, m):
        return m


def dpo_family(loss_types, beta, label_smoothing=0.0):
    tok = TOK.clone().requires_grad_(True)

    def model(**kwargs):
        n = tok.size(0)
        return types.SimpleNamespace(
            log_probs=tok,
            entropy=torch.zeros(n, L - 1),
            mean_logits=torch.zeros(n, L - 1),
            is_top1=torch.zeros(n, L - 1, dtype=torch.bool),
        )

    model.training = True
    stub = types.SimpleNamespace(
        model=model,
        accelerator=StubAccelerator(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=loss_types,
        loss_weights=[1.0] * len(loss_types),
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(2 * B, L, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, L, dtype=torch.long),
        "completion_mask": MASK,
        "ref_chosen_logps": REF[:B],
        "ref_rejected_logps": REF[B:],
    }
    loss = DPOTrainer._compute_loss(stub, model, inputs, False)
    loss.backward()
    # Every completion token of a sequence carries the same gradient: d loss / d (its sum).
    grad = [tok.grad[i][SHIFT[i].bool()][0].item() for i in range(2 * B)]
    return loss.item(), grad


def reference_free(kind, beta, gamma=0.0):
    sums = SUMS.clone().requires_grad_(True)
    lens = torch.tensor(LEN_C + LEN_R, dtype=torch.float64)
    avg = sums / lens
    stub = types.SimpleNamespace(
        beta=beta, label_smoothing=0.0, loss_type="simpo", simpo_gamma=gamma, alpha=0.0, accelerator=StubAccelerator()
    )
    if kind == "simpo":
        losses, _, _ = CPOTrainer.cpo_loss(stub, avg[:B], avg[B:])
        loss = losses.mean()
    else:
        losses, _, _, _, _ = ORPOTrainer.odds_ratio_loss(stub, avg[:B], avg[B:])
        nll = -sums[:B].sum() / lens[:B].sum()  # token-mean cross-entropy over the chosen completions
        loss = nll - losses.mean()
    loss.backward()
    return loss.item(), sums.grad.tolist()


def cdpo(beta, eps):
    sums = SUMS.clone().requires_grad_(True)
    logits = (sums[:B] - REF[:B]) - (sums[B:] - REF[B:])
    losses = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    loss = losses.mean()
    loss.backward()
    return loss.item(), sums.grad.tolist()


cases = {}
for name, fn in [
    ("dpo", lambda: dpo_family(["sigmoid"], 0.1)),
    ("robust", lambda: dpo_family(["robust"], 0.1, 0.2)),
    ("ipo", lambda: dpo_family(["ipo"], 0.1)),
    ("hinge", lambda: dpo_family(["hinge"], 0.1)),
    ("rpo", lambda: dpo_family(["sigmoid", "sft"], 0.1)),
    ("cdpo", lambda: cdpo(0.1, 0.2)),
    ("simpo", lambda: reference_free("simpo", 2.0, 0.5)),
    ("orpo", lambda: reference_free("orpo", 0.1)),
]:
    loss, grad = fn()
    cases[name] = {"loss": loss, "grad_chosen": grad[:B], "grad_rejected": grad[B:]}

out = {
    "trl_version": trl.__version__,
    "torch_version": torch.__version__,
    "policy_chosen": SUMS[:B].tolist(),
    "policy_rejected": SUMS[B:].tolist(),
    "reference_chosen": REF[:B].tolist(),
    "reference_rejected": REF[B:].tolist(),
    "tokens_chosen": LEN_C,
    "tokens_rejected": LEN_R,
    "params": {"beta": 0.1, "label_smoothing": 0.2, "simpo_beta": 2.0, "simpo_gamma": 0.5},
    "cases": cases,
}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dpo_losses.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1)
print(json.dumps({k: v["loss"] for k, v in cases.items()}))
