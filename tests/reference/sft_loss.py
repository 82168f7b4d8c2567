"""Reference for train/src/sft.rs: TRL SFTTrainer's completion-only loss is PyTorch's cross-entropy over the
completion positions (prompt and padding labels set to -100), mean over the batch's completion tokens.

Two packed sequences, vocab 5: seq 0 = prompt [p, p] + completion [3, 1, 4] (rows 0..4 of logits predict the next
token), seq 1 = prompt [p] + completion [0, 2]. Run: python tests/reference/sft_loss.py
"""
import torch
import torch.nn.functional as F

logits = torch.tensor([
    [0.1, -0.3, 0.8, 0.0, 0.5],
    [1.2, 0.4, -0.7, 0.3, 0.0],
    [-0.5, 0.9, 0.2, 1.1, -0.2],
    [0.0, 0.3, 0.6, -0.4, 0.7],
    [0.9, -1.0, 0.1, 0.2, 0.4],
    [0.3, 0.2, -0.1, 0.0, 0.6],
    [-0.2, 0.5, 1.3, -0.6, 0.1],
    [0.7, 0.0, -0.3, 0.9, -0.8],
], dtype=torch.float64)
# Labels as HF shifts them: row r is scored against the token at r + 1; prompt and pad rows are ignored.
labels = torch.tensor([-100, 3, 1, 4, 0, 2, -100, -100])
print(repr(F.cross_entropy(logits, labels, ignore_index=-100).item()))
