"""Every built-in Orchard reward as a function with TRL's ``reward_funcs`` signature.

    from trl import GRPOTrainer
    import orchard
    trainer = GRPOTrainer(model=..., reward_funcs=[orchard.rewards.gsm8k], train_dataset=ds)

Each function takes ``prompts``, ``completions`` (strings, or lists of chat messages as TRL passes them for
conversational datasets: the last message's ``content`` is scored) and every dataset column as a keyword list
(``answer`` for the math rewards, ``tests``/``entry_point`` for unit tests, …: ``orchard reward --list`` says what
each reads), and returns one float per completion — ``None`` where the row cannot be scored (a missing reference,
a sandbox failure), which TRL ignores. Code rewards (``pot``, ``humaneval``) run the programs in Orchard's sandbox
(bubblewrap). The names are the CLI's, with ``-`` written ``_`` (``unit_tests``).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Sequence

from orchard import _native

#: Keyword arguments TRL passes that are not dataset columns.
_NOT_COLUMNS = {"completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}


def _text(x: Any) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, Sequence) and x and isinstance(x[-1], dict) and "content" in x[-1]:
        return str(x[-1]["content"])
    raise _native.OrchardError(f"a completion must be a string or a list of chat messages, got {x!r}")


def _json_value(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)


def score(
    name: str,
    completions: Sequence[Any],
    prompts: Optional[Sequence[Any]] = None,
    sandbox: str = "auto",
    **columns: Any,
) -> List[Optional[float]]:
    """Scores ``completions`` with the reward ``name`` (a built-in name or ``python:FILE:FUNCTION``); the
    ``columns`` are per-row lists (``answer=[...]``) and must have one value per completion."""
    n = len(completions)
    rows: List[Dict[str, Any]] = [{"completion": _text(c)} for c in completions]
    if prompts is not None:
        if len(prompts) != n:
            raise _native.OrchardError(f"{len(prompts)} prompts but {n} completions")
        for row, p in zip(rows, prompts):
            row["prompt"] = _text(p)
    for key, values in columns.items():
        if key in _NOT_COLUMNS or isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            continue
        if len(values) != n:
            raise _native.OrchardError(f"column `{key}` has {len(values)} values for {n} completions")
        for row, v in zip(rows, values):
            row[key] = _json_value(v)
    out = json.loads(_native.score_rewards(name, json.dumps(rows), sandbox))
    return [r["score"] for r in out]


def explain(name: str, completion: str, **fields: Any) -> List[Dict[str, Any]]:
    """Scores one completion and returns the row's outcome (``score``, ``error``); see ``orchard reward
    --explain`` for every component."""
    rows = [{"completion": completion, **{k: _json_value(v) for k, v in fields.items()}}]
    return json.loads(_native.score_rewards(name, json.dumps(rows), "auto"))


def catalog() -> List[Dict[str, str]]:
    """Every built-in reward: ``name``, ``summary``, ``reads`` (the columns it needs) and ``defaults`` (TOML)."""
    return json.loads(_native.reward_catalog())


def _make(name: str, entry: Dict[str, str]) -> Callable[..., List[Optional[float]]]:
    def reward(prompts: Optional[Sequence[Any]] = None, completions: Sequence[Any] = (), **kwargs: Any):
        return score(name, completions, prompts=prompts, **kwargs)

    ident = name.replace("-", "_")
    reward.__name__ = ident
    reward.__qualname__ = ident
    reward.__doc__ = (
        f"Orchard's `{name}` reward with TRL's reward_funcs signature: {' '.join(entry['summary'].split())}. "
        f"Reads the dataset columns: {entry['reads']}. Returns one float per completion (None: not scored)."
    )
    return reward


NAMES: List[str] = []
for _entry in catalog():
    _fn = _make(_entry["name"], _entry)
    globals()[_fn.__name__] = _fn
    NAMES.append(_fn.__name__)


def get(name: str) -> Callable[..., List[Optional[float]]]:
    """The reward ``name`` as a TRL reward function; ``python:FILE:FUNCTION`` runs a user function in Orchard's
    sandboxed worker pool. Raises :class:`OrchardError` for a name Orchard does not know."""
    ident = name.replace("-", "_")
    if ident in NAMES:
        return globals()[ident]
    if name.startswith("python:"):
        return _make(name, {"summary": f"the Python function {name[7:]}", "reads": "its own keyword arguments"})
    raise _native.OrchardError(f"unknown reward `{name}`; known: {', '.join(NAMES)}")
