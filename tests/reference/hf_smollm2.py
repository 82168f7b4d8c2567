"""Reference values from HF transformers for the default model (SmolLM2-135M-Instruct Q4_1 GGUF, dequantized to f32).

Writes tests/reference/hf_smollm2.json (tokenizer ids, scoring log-probs) and tests/reference/hf_smollm2_logprobs.f32
(full next-token log-softmax rows, little-endian f32, one row of `vocab` values per logprob case), which the Rust
tests in tests/engine_reference.rs compare against.

Run (needs torch, transformers, accelerate, gguf; CPU is fine):
    python tests/reference/hf_smollm2.py --gguf ~/.cache/orchard/models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse
import json
import os
import struct

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

TOKENIZER_CASES = [
    "Hello",
    "Hello world!",
    " leading space",
    "trailing space ",
    "Janet’s ducks lay 16 eggs per day.",
    "1234567890",
    "3.14159 and 2,718,281",
    "$1,000.50 is 100% off",
    "x = [i**2 for i in range(10)]",
    "def solution():\n    return 42\n",
    "if (a && b) { return -1; }",
    "    four spaces\tand a tab",
    "many     spaces      here",
    "line one\nline two\n\nline four",
    "\n\n\n",
    "emoji 😀🚀 and ✨",
    "naïve café résumé",
    "日本語のテキスト",
    "Привет, мир",
    "مرحبا بالعالم",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>assistant\n",
    "text with <|endoftext|> inside",
    "#### 72",
    "The answer is \\boxed{18}.",
    "I'm sure you'll see they've won't",
    "UPPER lower MiXeD",
    "a-b_c.d/e\\f",
    "   ",
    "tab\t\ttabs",
    "mixed 12abc34 def56",
    "\u00a0non-breaking\u2003spaces",
]

CHAT_CASES = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "You are a math tutor."}, {"role": "user", "content": "Solve 12 * 7."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
]

LOGPROB_PROMPTS = [
    ("raw", "The capital of France is"),
    ("raw", "def fibonacci(n):\n    if n < 2:\n        return n\n    return"),
    ("raw", "1, 2, 3, 4, 5,"),
    ("chat", "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"),
    ("chat", "Write a haiku about autumn."),
    ("chat", "What is 15% of 80?"),
]

SCORE_PAIRS = [
    ("raw", "The capital of France is", " Paris."),
    ("raw", "2 + 2 =", " 4"),
    ("raw", "Once upon a time", ", there was a little girl who lived in a village near the forest."),
    ("raw", "def add(a, b):\n", "    return a + b\n"),
    ("raw", "Q: What color is the sky?\nA:", " The sky is blue."),
    ("raw", "Translate to French: cheese =>", " fromage"),
    ("raw", "The quick brown fox", " jumps over the lazy dog."),
    ("raw", "import numpy as np\n", "x = np.zeros((3, 4))\nprint(x.shape)\n"),
    ("raw", "Step 1:", " Multiply 48 by 2 to get 96."),
    ("raw", "The answer is", " 42"),
    ("chat", "What is 2 + 3?", "2 + 3 = 5.<|im_end|>"),
    ("chat", "What is 7 * 8?", "7 * 8 = 56<|im_end|>"),
    ("chat", "Name a primary color.", "Red is a primary color.<|im_end|>"),
    ("chat", "Janet has 3 apples and buys 2 more. How many apples does she have?", "Janet has 3 + 2 = 5 apples.\n#### 5<|im_end|>"),
    ("chat", "Say hello.", "Hello!<|im_end|>"),
    ("chat", "What is the boiling point of water in Celsius?", "100 degrees Celsius at sea level.<|im_end|>"),
    ("chat", "Write a Python function that returns the square of x.", "def square(x):\n    return x * x<|im_end|>"),
    ("chat", "Is 17 prime?", "Yes, 17 is a prime number.<|im_end|>"),
    ("chat", "Give me a synonym for happy.", "Joyful.<|im_end|>"),
    ("chat", "What is 100 divided by 4?", "100 / 4 = 25<|im_end|>"),
    ("chat", "Count to five.", "1, 2, 3, 4, 5<|im_end|>"),
    ("chat", "What is the capital of Japan?", "The capital of Japan is Tokyo. It is one of the largest cities in the world.<|im_end|>"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    d, f = os.path.dirname(os.path.abspath(args.gguf)), os.path.basename(args.gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()

    def prompt_ids(kind, text):
        if kind == "raw":
            return tok(text)["input_ids"]
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    out = {"model": "SmolLM2-135M-Instruct.Q4_1.gguf", "transformers": __import__("transformers").__version__,
           "torch": torch.__version__, "tokenizer": [], "chat": [], "logprobs": [], "score": []}
    for text in TOKENIZER_CASES:
        out["tokenizer"].append({"text": text, "ids": tok(text)["input_ids"]})
    for messages in CHAT_CASES:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out["chat"].append({"messages": messages, "text": text, "ids": tok(text, add_special_tokens=False)["input_ids"]})

    rows = []
    with torch.no_grad():
        for kind, text in LOGPROB_PROMPTS:
            ids = prompt_ids(kind, text)
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            lp = torch.log_softmax(logits, -1)
            top = torch.topk(lp, 5)
            rows.append(lp.numpy())
            out["logprobs"].append({"kind": kind, "text": text, "ids": ids,
                                    "top5_ids": top.indices.tolist(), "top5_logprobs": top.values.tolist()})
        for kind, prompt, completion in SCORE_PAIRS:
            p = prompt_ids(kind, prompt)
            c = tok(completion, add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([p + c])).logits[0].float()
            lp = torch.log_softmax(logits, -1)
            tlp = [lp[len(p) - 1 + i, t].item() for i, t in enumerate(c)]
            out["score"].append({"kind": kind, "prompt": prompt, "completion": completion, "prompt_ids": p,
                                 "completion_ids": c, "token_logprobs": tlp, "logprob_sum": sum(tlp)})
    with open(os.path.join(args.out_dir, "hf_smollm2.json"), "w") as fh:
        json.dump(out, fh, indent=1, ensure_ascii=False)
    with open(os.path.join(args.out_dir, "hf_smollm2_logprobs.f32"), "wb") as fh:
        for r in rows:
            fh.write(struct.pack(f"<{len(r)}f", *r.tolist()))
    print("wrote", len(out["tokenizer"]), "tokenizer cases,", len(rows), "logprob rows,", len(out["score"]), "score pairs")


if __name__ == "__main__":
    main()
