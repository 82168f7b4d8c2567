"""Reference values for train/src/rl.rs: TRL GRPOTrainer's advantage and loss code (trl/trainer/grpo_trainer.py,
`_generate_and_score_completions` and `_compute_loss`), RLOO's leave-one-out baseline and OpenRLHF's
REINFORCE++-baseline, transcribed in PyTorch on hand-built inputs. Run: python tests/reference/rl_objectives.py
"""
import torch

torch.set_printoptions(precision=8)
r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.2, 0.9], dtype=torch.float64)
G = 4
g = r.view(-1, G)
mean = g.mean(1).repeat_interleave(G)
std = g.std(1).repeat_interleave(G)  # unbiased, as TRL
print("grpo", ((r - mean) / (std + 1e-4)).tolist())
print("dr_grpo", (r - mean).tolist())
print("rloo", (r - (g.sum(1).repeat_interleave(G) - r) / (G - 1)).tolist())
a = r - mean
print("reinforce_pp", ((a - a.mean()) / (a.std() + 1e-8)).tolist())

# Loss: 3 completions of 3, 2, 2 tokens, padded to 3 with a mask, as TRL holds them.
lp = [[-1.0, -0.5, -2.0], [-0.3, -1.2, 0.0], [-0.8, -0.1, 0.0]]
old = [[-1.1, -0.2, -2.5], [-0.3, -0.9, 0.0], [-0.8, -0.6, 0.0]]
ref = [[-1.0, -0.6, -1.8], [-0.4, -1.0, 0.0], [-0.9, -0.2, 0.0]]
mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0]], dtype=torch.float64)
adv = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)


def loss(loss_type, beta, eps_low, eps_high, max_len=4):
    logps = torch.tensor(lp, dtype=torch.float64, requires_grad=True)
    old_t, ref_t = torch.tensor(old, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64)
    coef_1 = torch.exp(logps - old_t)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    l1, l2 = coef_1 * adv.unsqueeze(1), coef_2 * adv.unsqueeze(1)
    per_token = -torch.min(l1, l2)
    if beta != 0.0:
        kl = torch.exp(ref_t - logps) - (ref_t - logps) - 1
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        out = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        out = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        out = (per_token * mask).sum() / (per_token.size(0) * max_len)
    out.backward()
    grad = logps.grad[mask.bool()]
    return out.item(), grad.tolist()


print("grpo beta0", loss("grpo", 0.0, 0.2, 0.2))
print("bnpo beta0 clip-higher", loss("bnpo", 0.0, 0.2, 0.28))
print("dr_grpo beta0.04", loss("dr_grpo", 0.04, 0.2, 0.2))
