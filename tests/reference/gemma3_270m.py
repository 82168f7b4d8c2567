"""Reference values from HF transformers for the real Gemma 3 270M file (`orchard fetch-model gemma3-270m`:
gemma-3-270m-q4_k_m.gguf, SHA-256 a5fd3b62…), loaded by transformers' own GGUF support (weights dequantized to
f32, tokenizer rebuilt from the file's vocabulary). Orchard holds the same file's Q4_K/Q5_0/Q6_K tensors
re-quantized to Q8_0, so logits agree to quantization error, not bit for bit.

Writes tests/reference/gemma3_270m.json: token ids of 24 strings (tokenizer equality), and for 6 prompts (one longer
than the 512-position sliding window) the top-5 next-token ids and log-probs at the last position, and a
20-token greedy continuation of two prompts. engine/tests/gemma3.rs compares against it. Run:

    python tests/reference/gemma3_270m.py ~/.cache/orchard/models/gemma-3-270m-q4_k_m.gguf   # needs `gguf`
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

STRINGS = [
    "Hello world",
    "Hello world, 12345 café",
    " leading space",
    "  two leading spaces",
    "trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nthree",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "The answer is #### 72",
    "def add(a, b):\n    return a + b\n",
    "ÀÉÎÕÜ ñ ß ø œ",
    "日本語のテキストです。",
    "中文文本测试",
    "Привет, мир!",
    "emoji 🍎🍏🍐 and 👍🏽",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "x = 3.14159 * r ** 2",
    "https://example.com/path?query=1&b=2",
    "UPPER lower MiXeD",
    "don't won't it's they're",
    "a" * 40,
    "1234567890 0987654321",
    "\u0000\u0001 control \u007f",
    "<unused5> and <mask> inside text",
    "    indented code block",
]

LONG = " ".join(
    f"Problem {i}: Tom has {i * 7 % 50 + 3} apples and gives {i % 5 + 1} to each of his {i % 4 + 2} friends."
    for i in range(40)
)
PROMPTS = [
    "The capital of France is",
    "Question: What is 12 plus 30?\nAnswer:",
    "def fibonacci(n):",
    "Once upon a time",
    "<start_of_turn>user\nWrite one sentence about apples.<end_of_turn>\n<start_of_turn>model\n",
    LONG + " How many apples does Tom give away in problem 39?",
]
GREEDY = ["The capital of France is", "Once upon a time"]


def main():
    path = os.path.abspath(sys.argv[1])
    d, f = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    out = {"transformers": __import__("transformers").__version__, "tokenize": [], "next": [], "greedy": []}
    for s in STRINGS:
        out["tokenize"].append({"text": s, "ids": tok(s, add_special_tokens=True).input_ids})
    with torch.no_grad():
        for p in PROMPTS:
            ids = tok(p, add_special_tokens=True).input_ids
            lsm = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), dim=-1)
            top = torch.topk(lsm, 5)
            out["next"].append(
                {"prompt": p, "ids": ids, "top5_ids": top.indices.tolist(), "top5_logprobs": top.values.tolist()}
            )
            print(len(ids), top.indices.tolist(), flush=True)
        for p in GREEDY:
            ids = tok(p, add_special_tokens=True).input_ids
            gen = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids):].tolist()
            out["greedy"].append({"prompt": p, "ids": ids, "completion_ids": gen, "text": tok.decode(gen)})
            print(repr(tok.decode(gen)), flush=True)
    dst = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gemma3_270m.json")
    with open(dst, "w") as fh:
        json.dump(out, fh, ensure_ascii=False)
    print("wrote", dst)


if __name__ == "__main__":
    main()
