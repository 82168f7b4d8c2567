"""Other tools read Orchard's pairs Parquet unchanged: pyarrow, pandas and HF `datasets`, in TRL's DPO layout.

Produces its inputs through the binaries: `orchard-datasets-tool fake-sample` writes a run with the datasets crate's
run writer (a deterministic stand-in for the engine), then `orchard export --format trl|trl-conversational|kto`
writes the single-file exports. Checks columns and types against TRL's DPO format (docs: dataset_formats.md) in
both the standard and the conversational form, and that the run's own `pairs/` directory loads as a dataset.

Run with `pytest tests/python` or `python tests/python/test_trl_format.py`. Needs `pyarrow pandas datasets` (not
TRL or torch) and the two binaries built (`cargo build --bins -p orchard -p orchard-datasets`); their location is
taken from $ORCHARD_BIN / $ORCHARD_DATASETS_TOOL, else $CARGO_TARGET_DIR (or ./target)/debug.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"
ORCHARD = Path(os.environ.get("ORCHARD_BIN", TARGET / "orchard"))
TOOL = Path(os.environ.get("ORCHARD_DATASETS_TOOL", TARGET / "orchard-datasets-tool"))

TRL_COLUMNS = ["prompt", "chosen", "rejected"]
# Columns TRL's DPOTrainer itself reads: Orchard's metadata must never take these names.
TRL_RESERVED = {"ref_chosen_logps", "ref_rejected_logps", "tools", "chat_template_kwargs", "image", "images"}
MESSAGE = pa.struct([pa.field("role", pa.string(), nullable=False), pa.field("content", pa.string(), nullable=False)])


def is_conversational(example):
    """TRL's own test, copied from trl/data_utils.py (TRL 1.x) so that TRL need not be installed."""
    supported_keys = ["prompt", "chosen", "rejected", "completion", "messages"]
    example_keys = {key for key in example.keys() if key in supported_keys}
    if example_keys:
        key = example_keys.pop()
        maybe_messages = example[key]
        if isinstance(maybe_messages, list):
            maybe_message = maybe_messages[0]
            if isinstance(maybe_message, dict) and "role" in maybe_message and "content" in maybe_message:
                return True
    return False


_WORK = None


def work():
    """Make the run and the exports once per session: {name: path}."""
    global _WORK
    if _WORK is None:
        for binary in (ORCHARD, TOOL):
            if not binary.exists():
                raise FileNotFoundError(f"{binary} not built: cargo build --bins -p orchard -p orchard-datasets")
        tmp = Path(tempfile.mkdtemp(prefix="orchard-trl-"))
        run, conv_run = tmp / "run", tmp / "conv-run"
        fake = [str(TOOL), "fake-sample", "--limit", "24", "--n", "8", "--flush-rows", "100"]
        subprocess.run(fake + ["--out", str(run)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(fake + ["--pair-format", "conversational", "--out", str(conv_run)], check=True, stdout=subprocess.DEVNULL)
        paths = {"run": run, "conv_run": conv_run, "cache": tmp / "hf-cache"}
        for fmt in ("trl", "trl-conversational", "kto"):
            out = tmp / f"{fmt}.parquet"
            subprocess.run([str(ORCHARD), "export", "--run", str(run), "--format", fmt, "--out", str(out)], check=True,
                           stdout=subprocess.DEVNULL)
            paths[fmt] = out
        _WORK = paths
    return _WORK


def load_hf(files):
    return datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(work()["cache"]))


def check_namespacing(names):
    for name in names:
        assert name in TRL_COLUMNS or name.startswith("meta_"), name
        assert name not in TRL_RESERVED, name


def test_standard_form_with_pyarrow():
    table = pq.read_table(work()["trl"])
    assert table.num_rows > 0
    assert table.column_names[:3] == TRL_COLUMNS
    for column in TRL_COLUMNS:
        assert table.schema.field(column).type == pa.string(), column
    check_namespacing(table.column_names)
    assert table.schema.field("meta_margin").type == pa.float64()
    assert table.schema.field("meta_behaviour_logp_chosen").type == pa.float64()


def test_conversational_form_with_pyarrow():
    table = pq.read_table(work()["trl-conversational"])
    for column in TRL_COLUMNS:
        assert table.schema.field(column).type == pa.list_(pa.field("item", MESSAGE, nullable=False)), column
    check_namespacing(table.column_names)
    first = table.slice(0, 1).to_pylist()[0]
    assert first["prompt"][-1]["role"] == "user"
    assert [m["role"] for m in first["chosen"]] == ["assistant"]
    assert [m["role"] for m in first["rejected"]] == ["assistant"]


def test_both_forms_with_pandas():
    std = pd.read_parquet(work()["trl"])
    conv = pd.read_parquet(work()["trl-conversational"])
    assert len(std) == len(conv) > 0
    row = std.iloc[0]
    assert all(isinstance(row[c], str) for c in TRL_COLUMNS)
    assert (std["meta_margin"] > 0).all()
    assert (std["meta_score_chosen"] > std["meta_score_rejected"]).all()
    crow = conv.iloc[0]
    assert crow["prompt"][-1]["role"] == "user"
    assert crow["chosen"][0]["role"] == "assistant"
    # The same pair in both forms: the assistant message is the standard form's completion.
    assert crow["chosen"][0]["content"] == row["chosen"]
    assert crow["meta_prompt_text"] == row["prompt"]


def feature_is_message_list(feature):
    inner = getattr(feature, "feature", None)
    if inner is None and isinstance(feature, list):
        inner = feature[0]
    return isinstance(inner, dict) and set(inner) == {"role", "content"} and all(
        isinstance(v, datasets.Value) and v.dtype == "string" for v in inner.values()
    )


def test_standard_form_with_hf_datasets():
    ds = load_hf(str(work()["trl"]))
    for column in TRL_COLUMNS:
        assert ds.features[column] == datasets.Value("string"), ds.features[column]
    assert not is_conversational(ds[0])
    assert ds.num_rows == pq.read_metadata(work()["trl"]).num_rows


def test_conversational_form_with_hf_datasets():
    ds = load_hf(str(work()["trl-conversational"]))
    for column in TRL_COLUMNS:
        assert feature_is_message_list(ds.features[column]), ds.features[column]
    example = ds[0]
    assert is_conversational(example)
    assert example["prompt"][-1]["role"] in ("user", "tool")
    assert example["chosen"] == [{"role": "assistant", "content": example["chosen"][0]["content"]}]


def test_run_pairs_directory_loads_directly():
    for name, conversational in (("run", False), ("conv_run", True)):
        pairs = work()[name] / "pairs"
        table = pq.read_table(pairs)
        ds = load_hf(str(pairs / "*.parquet"))
        assert ds.num_rows == table.num_rows > 0
        assert is_conversational(ds[0]) == conversational


def test_kto_export_types():
    table = pq.read_table(work()["kto"])
    assert table.schema.field("prompt").type == pa.string()
    assert table.schema.field("completion").type == pa.string()
    assert table.schema.field("label").type == pa.bool_()
    ds = load_hf(str(work()["kto"]))
    assert ds.features["label"] == datasets.Value("bool")


if __name__ == "__main__":
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and callable(f)]
    failed = 0
    for name, fn in tests:
        try:
            fn()
            print(f"{name} ... ok")
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"{name} ... FAILED: {e!r}")
    print(f"{len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
