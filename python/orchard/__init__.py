"""Orchard from Python: the engine, the verifiable rewards, the sandbox and the data/training jobs of the
`orchard` binary, in-process.

    import orchard

    engine = orchard.Engine()                      # the default model (SmolLM2-135M-Instruct, fetched once)
    out = engine.generate(["What is 2 + 3?"], n=2, temperature=0.7, max_new_tokens=32, seed=0)
    print(out[0][0].text, out[0][0].token_ids[:5])

    orchard.rewards.gsm8k(completions=["... The answer is 5."], answer=["#### 5"])   # -> [1.0]

    run = orchard.sample({"source": {"task": "gsm8k", "split": "train", "limit": 5}, "n": 4,
                          "reward": "gsm8k"}, out="runs/py")
    run.pairs()                                    # pyarrow.Table (TRL's prompt/chosen/rejected)
    run.pairs(as_dataset=True)                     # datasets.Dataset, ready for trl.DPOTrainer

Configurations are the same as the CLI's TOML job files (a path, or the same keys as a dict); unknown keys,
missing files and bad values raise :class:`OrchardError` with the CLI's message.
"""

from __future__ import annotations

from orchard import _native
from orchard._native import OrchardError, __version__
from orchard._engine import Engine, Sample, Scored
from orchard._jobs import Run, loop, sample, search
from orchard import rewards, sandbox

__all__ = [
    "Engine",
    "OrchardError",
    "Run",
    "Sample",
    "Scored",
    "__version__",
    "loop",
    "rewards",
    "sample",
    "sandbox",
    "search",
]
