"""Reward functions written the way TRL and verl users write them; use them with

    orchard reward --kind python:examples/rewards/my_rewards.py:think_format --input rows.jsonl
    orchard sample ... --reward-config examples/rewards/gsm8k_plus_format.toml

TRL style (`reward_funcs`): called once per batch with lists, every dataset column as a keyword list.
verl style (`compute_score`): called per row.
"""
import re


def think_format(completions, **kwargs):
    """1 when the completion reasons in <think> tags before answering, else 0."""
    return [1.0 if re.search(r"<think>.+?</think>", c, re.S) else 0.0 for c in completions]


def concise(completions, **kwargs):
    """A length penalty: 0 up to 400 characters, then down to -1 at 1,200."""
    return [-min(max(len(c) - 400, 0) / 800, 1.0) for c in completions]


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """verl's signature: 1 when the last number in the completion equals the reference."""
    numbers = re.findall(r"-?\d+(?:\.\d+)?", solution_str.replace(",", ""))
    if not numbers or ground_truth is None:
        return 0.0
    return 1.0 if float(numbers[-1]) == float(ground_truth) else 0.0
