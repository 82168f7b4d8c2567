"""Reward functions as TRL's and verl's users write them, and a driver that calls them directly (the reference
`tests/reward_python.rs` compares `orchard reward --kind python:…` against).

* `reward_len` and `format_reward_func` are the examples of TRL's GRPOTrainer documentation ("Using a custom reward
  function": a length reward, and a format reward over conversational completions).
* `compute_score` has the signature of verl's custom reward function (`custom_reward_function.name`):
  `compute_score(data_source, solution_str, ground_truth, extra_info=None)`; it grades GSM8K's strict `#### N`
  format as verl's built-in GSM8K scorer does (1 for the right number, `format_score` for a wrong one, 0 without).

Direct call: `python3 tests/reference/user_rewards.py FUNCTION ROWS.jsonl [conversational]` prints one JSON list of
scores, calling TRL-style functions once with the whole batch, as GRPOTrainer does, and verl-style ones per row.
"""
import json
import re
import sys


def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]


def format_reward_func(completions, **kwargs):
    """Reward function that checks if the completion has a specific format."""
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


def _strict_answer(solution_str):
    found = re.search(r"#### (\-?[0-9\.\,]+)", solution_str[-300:])
    return None if found is None else found.group(1).replace(",", "").replace("$", "")


def compute_score(data_source, solution_str, ground_truth, extra_info=None, format_score=0.1, score=1.0):
    answer = _strict_answer(solution_str)
    if answer is None:
        return 0.0
    return score if answer == str(ground_truth) else format_score


def main():
    name, path = sys.argv[1], sys.argv[2]
    conversational = len(sys.argv) > 3 and sys.argv[3] == "conversational"
    rows = [json.loads(line) for line in open(path) if line.strip()]
    fn = globals()[name]
    if name == "compute_score":
        scores = [fn("openai/gsm8k", r["completion"], r.get("answer"), extra_info=r) for r in rows]
    else:
        completions = [r["completion"] for r in rows]
        prompts = [r.get("prompt", "") for r in rows]
        if conversational:
            completions = [[{"role": "assistant", "content": c}] for c in completions]
            prompts = [[{"role": "user", "content": p}] for p in prompts]
        columns = {k: [r.get(k) for r in rows] for k in rows[0] if k not in ("prompt", "completion")}
        scores = fn(prompts=prompts, completions=completions, **columns)
    print(json.dumps([float(s) for s in scores]))


if __name__ == "__main__":
    main()
