"""`orchard.sample`, `orchard.search`, `orchard.loop` and the run directories they write."""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, Mapping, Optional, Union

from orchard import _native

Config = Union[str, "os.PathLike[str]", Mapping[str, Any]]


def _config(config: Config) -> "tuple[str, bool]":
    if isinstance(config, Mapping):
        return json.dumps(dict(config)), False
    path = os.fspath(config)
    if not os.path.isfile(path):
        raise _native.OrchardError(f"{path}: no such configuration file (give a TOML path or a dict)")
    return path, True


class Run:
    """A run directory written by ``orchard sample`` / ``orchard search`` (or their Python calls): Parquet shards
    of ``trajectories/``, ``pairs/`` and, for searches, ``trees/``, with ``manifest.json``."""

    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(os.path.join(self.path, "manifest.json")):
            raise _native.OrchardError(f"{self.path}: not a run directory (no manifest.json)")

    @property
    def manifest(self) -> Dict[str, Any]:
        """The run's manifest: kind, model, counts, timings, the job's identity."""
        with open(os.path.join(self.path, "manifest.json")) as f:
            return json.load(f)

    def _table(self, name: str, as_dataset: bool):
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = sorted(glob.glob(os.path.join(self.path, name, "*.parquet")))
        if name == "trees" and self.manifest.get("identity", {}).get("job") != "search":
            raise _native.OrchardError(f"{self.path}: no trees/ in this run (only searches write trees)")
        # A run with no rows of a kind (no pairs: every sample scored the same) has no shard of it.
        table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default") if files else pa.table({})
        if as_dataset:
            import datasets

            return datasets.Dataset(table)
        return table

    def pairs(self, as_dataset: bool = False):
        """Preference pairs in TRL's layout (``prompt``, ``chosen``, ``rejected`` plus Orchard's columns) as a
        ``pyarrow.Table``, or a ``datasets.Dataset`` with ``as_dataset=True`` (what ``DPOTrainer`` takes)."""
        return self._table("pairs", as_dataset)

    def trajectories(self, as_dataset: bool = False):
        """Every scored completion (``task_id``, ``prompt``, ``completion``, ``reward``, …)."""
        return self._table("trajectories", as_dataset)

    def trees(self, as_dataset: bool = False):
        """Search trees, one row per node (search runs only)."""
        return self._table("trees", as_dataset)

    def __repr__(self) -> str:
        c = self.manifest.get("counts", {})
        return f"orchard.Run({self.path!r}, tasks={c.get('tasks')}, trajectories={c.get('trajectories')}, pairs={c.get('pairs')})"


def sample(config: Config, out: Optional[Union[str, "os.PathLike[str]"]] = None, sandbox: str = "auto") -> Run:
    """Runs (or resumes) a best-of-N sampling job — ``orchard sample --config`` — and returns its :class:`Run`.

    ``config`` is a TOML job file's path or a dict with the same keys (``model``, ``source``, ``n``, ``reward``,
    ``sampling``, ``pairs``, ``seed``, ``out``, …); ``out`` overrides the file's ``out``. Rerunning with the same
    configuration resumes; another configuration in the same directory is refused."""
    text, is_path = _config(config)
    path = _native.sample(text, is_path, None if out is None else os.fspath(out), sandbox)
    return Run(path)


def search(config: Config, out: Optional[Union[str, "os.PathLike[str]"]] = None, sandbox: str = "auto") -> Run:
    """Runs (or resumes) a tree search — ``orchard search --config`` (``algo`` = ``mcts``, ``toc`` or ``bon``) —
    and returns its :class:`Run`."""
    text, is_path = _config(config)
    path = _native.search(text, is_path, None if out is None else os.fspath(out), sandbox)
    return Run(path)


def loop(config: Config, out: Union[str, "os.PathLike[str]"], sandbox: str = "auto") -> Dict[str, Any]:
    """Runs (or resumes) ``orchard loop``: rounds of generate → train → hand the weights back → held-out eval
    (or ``mode = "online"`` RL), and returns its report (``loop.json`` / ``online.json``). The trained policy is
    ``OUT/final`` (an HF directory ``orchard.Engine`` loads)."""
    text, is_path = _config(config)
    return json.loads(_native.run_loop(text, is_path, os.fspath(out), sandbox))
