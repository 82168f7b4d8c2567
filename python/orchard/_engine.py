"""`orchard.Engine`: generate and score with Orchard's CPU engine (the GIL is released while it works)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

from orchard import _native

Prompt = Union[str, Sequence[Dict[str, str]]]

#: The CLI's defaults (`orchard generate --help`).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_MAX_BATCH = _native.DEFAULT_MAX_BATCH


@dataclass(frozen=True)
class Sample:
    """One generated completion."""

    text: str
    """The completion text (special tokens removed, cut before a matched stop string)."""
    token_ids: List[int]
    """Every generated token id, including the stop token that ended it."""
    token_logprobs: List[float]
    """The model's log-prob of each generated token (raw logits, temperature 1)."""
    finish_reason: str
    """`stop` (end of sequence or a stop string) or `length`."""
    seed: int
    """The seed of this sample's random stream (the same seed gives the same tokens)."""


@dataclass(frozen=True)
class Scored:
    """Teacher-forced log-probs of one completion given its prompt."""

    logprob_sum: float
    token_logprobs: List[float]
    n_tokens: int
    token_ids: List[int]


def _prompt(p: Prompt) -> Union[str, List[Dict[str, str]]]:
    if isinstance(p, str):
        return p
    try:
        return [{"role": m["role"], "content": m["content"]} for m in p]
    except (TypeError, KeyError) as e:
        raise _native.OrchardError(
            f"a prompt must be a string or a list of {{'role', 'content'}} messages, got {p!r}"
        ) from e


class Engine:
    """A model loaded for generation and scoring.

    Args:
        model: ``"default"`` (SmolLM2-135M-Instruct, fetched into ``~/.cache/orchard`` on first use), a ``.gguf``
            file, or an HF model directory (``config.json``, safetensors, ``tokenizer.json``).
        threads: compute threads (default: every core; ``RAYON_NUM_THREADS`` wins). Set once per process.

    Raises:
        OrchardError: the model does not exist or cannot be loaded (the message names the file).
    """

    def __init__(self, model: str = "default", threads: Optional[int] = None) -> None:
        self._native = _native.NativeEngine(str(model), threads)
        self.model = str(model)

    @property
    def info(self) -> dict:
        """`id`, `path`, `architecture`, `vocab_size`, `context` and `parameters` of the loaded model."""
        return json.loads(self._native.info())

    def generate(
        self,
        prompts: Union[Prompt, Sequence[Prompt]],
        n: int = 1,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        stop_token_ids: Optional[Sequence[int]] = None,
        ignore_eos: bool = False,
        system: Optional[str] = None,
        raw: bool = False,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> List[List[Sample]]:
        """Samples ``n`` completions for each prompt, batching every open sequence into each forward.

        Prompts are strings (rendered with the model's chat template as a user turn, after ``system`` if given)
        or lists of chat messages; ``raw=True`` tokenizes strings as they are. Sample ``j`` of a prompt uses a
        random stream derived from ``(seed, j)``: the same arguments give the same tokens, as ``orchard generate``
        does. Returns one list of :class:`Sample` per prompt, in order.
        """
        single = isinstance(prompts, str) or (
            isinstance(prompts, Sequence) and len(prompts) > 0 and isinstance(prompts[0], dict)
        )
        plist = [prompts] if single else list(prompts)
        args = {
            "prompts": [_prompt(p) for p in plist],
            "n": int(n),
            "sampling": {
                "temperature": float(temperature),
                "top_k": int(top_k),
                "top_p": float(top_p),
                "min_p": float(min_p),
                "max_new_tokens": int(max_new_tokens),
                "stop_token_ids": [int(t) for t in (stop_token_ids or [])],
                "stop": [str(s) for s in (stop or [])],
                "ignore_eos": bool(ignore_eos),
            },
            "seed": int(seed),
            "system": system,
            "raw": bool(raw),
            "max_batch": int(max_batch),
        }
        out = json.loads(self._native.generate(json.dumps(args)))
        return [[Sample(**s) for s in per_prompt] for per_prompt in out]

    def score(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[str],
        system: Optional[str] = None,
        raw: bool = False,
    ) -> List[Scored]:
        """Teacher-forced log-probs of each completion given its prompt, in f32 (the trainer's numerics), as
        ``orchard score`` computes them. One completion per prompt."""
        args = {
            "prompts": [_prompt(p) for p in prompts],
            "completions": [str(c) for c in completions],
            "system": system,
            "raw": bool(raw),
        }
        return [Scored(**s) for s in json.loads(self._native.score(json.dumps(args)))]

    def __repr__(self) -> str:
        i = self.info
        return f"orchard.Engine({i['id']!r}, {i['architecture']}, {i['parameters']:,} parameters)"
