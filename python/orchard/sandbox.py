"""Orchard's sandbox for model-written code: bubblewrap (no network, the host read-only, a private /tmp) with
rlimits, the same one the code rewards use. Without bubblewrap it refuses to run anything unless
``sandbox="rlimits"`` is asked for by name."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from orchard import _native


def run(
    program: str,
    timeout: Optional[str] = None,
    memory: Optional[str] = None,
    sandbox: str = "auto",
    **policy: Any,
) -> Dict[str, Any]:
    """Runs a Python ``program`` and returns ``status`` (ok / error / timeout / memory / killed / output_limit),
    ``exit_code``, ``signal``, ``stdout``, ``stderr``, ``wall_ms`` and ``reason`` — what ``orchard exec`` prints.

    ``timeout`` (``"5s"``) and ``memory`` (``"512MiB"``) and any other key of the sandbox policy
    (``max_processes``, ``max_output``, ``site_packages``) override the defaults; unknown keys raise
    :class:`OrchardError`.
    """
    if timeout is not None:
        policy["timeout"] = timeout
    if memory is not None:
        policy["memory"] = memory
    return json.loads(_native.sandbox_run(program, json.dumps(policy), sandbox))
