# Orchard's Python reward worker: imports one user file, then scores batches read from stdin, one JSON object a
# line, answering each with one JSON line on the protocol pipe (the original stdout, saved before the user's code
# runs; the user's own prints go to stderr). Started by rewards/src/pyfunc/pool.rs; argv: FILE FUNCTION STYLE.
#
# Request:  {"prompts": [...], "completions": [...], "columns": {name: [value per row]}}
# Response: {"results": [{"score": float | null, "components": {...}} | {"error": "..."}, ...]}
import importlib.util
import inspect
import json
import math
import os
import sys
import traceback

_proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(2, 1)
sys.stdout = sys.stderr
_MAX_TRACE = 4000


def _send(obj):
    _proto.write(json.dumps(obj) + "\n")
    _proto.flush()


def _trace():
    text = traceback.format_exc()
    return text if len(text) <= _MAX_TRACE else "...\n" + text[-_MAX_TRACE:]


def _load(path, name):
    directory = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location("orchard_user_reward", path)
    if spec is None or spec.loader is None:
        raise ImportError("cannot import %s as a Python module" % path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["orchard_user_reward"] = module
    spec.loader.exec_module(module)
    functions = sorted(
        n for n, v in vars(module).items()
        if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
    )
    return getattr(module, name, None), functions


def _style(fn, name, style):
    if style != "auto":
        return style
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return "trl"
    return "verl" if "solution_str" in params or name == "compute_score" else "trl"


def _score_value(value, row):
    """One returned value as a result: a number, a bool, None (not applicable), or (verl) a dict with "score"."""
    components = {}
    if isinstance(value, dict):
        if "score" not in value:
            return {"error": "row %d: returned a dict without a \"score\" key (keys: %s)" % (row, sorted(value))}
        components = {str(k): float(v) for k, v in value.items()
                      if k != "score" and isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v)}
        value = value["score"]
    if value is None:
        return {"score": None}
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)) or isinstance(value, complex):
        try:
            value = float(value)  # numpy and torch scalars
        except Exception:
            return {"error": "row %d: returned %r (%s), expected a number or None" % (row, value, type(value).__name__)}
    value = float(value)
    if math.isnan(value):
        return {"score": None}
    if math.isinf(value):
        return {"error": "row %d: returned %r, expected a finite number" % (row, value)}
    return {"score": value, "components": components}


def _as_list(out, n):
    """The returned value as a list of n values, or an error message for every row."""
    if hasattr(out, "tolist"):
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        return None, "returned %s, expected a list of %d numbers" % (type(out).__name__, n)
    if len(out) != n:
        return None, "returned %d scores for %d completions" % (len(out), n)
    return list(out), None


def _trl(fn, req, offset):
    prompts, completions, columns = req["prompts"], req["completions"], req["columns"]
    n = len(completions)
    try:
        out = fn(prompts=prompts, completions=completions, **columns)
    except Exception:
        if n == 1:
            return [{"error": _trace()}]
        return _trl_rows(fn, req, offset)
    values, error = _as_list(out, n)
    if error is not None:
        return [{"error": error} for _ in range(n)]
    return [_score_value(v, offset + i) for i, v in enumerate(values)]


def _trl_rows(fn, req, offset):
    """The batch raised: call row by row so only the rows that raise are marked."""
    prompts, completions, columns = req["prompts"], req["completions"], req["columns"]
    results = []
    for i in range(len(completions)):
        one = {k: v[i:i + 1] for k, v in columns.items()}
        try:
            out = fn(prompts=prompts[i:i + 1], completions=completions[i:i + 1], **one)
        except Exception:
            results.append({"error": _trace()})
            continue
        values, error = _as_list(out, 1)
        results.append({"error": error} if error is not None else _score_value(values[0], offset + i))
    return results


def _verl(fn, req, offset):
    results = []
    columns = req["columns"]
    for i, completion in enumerate(req["completions"]):
        row = {k: v[i] for k, v in columns.items()}
        data_source = row.pop("data_source", None) or req.get("data_source") or "orchard"
        ground_truth = row.pop("ground_truth", None)
        if ground_truth is None:
            ground_truth = row.get("answer")
        if ground_truth is None and isinstance(row.get("reward_model"), dict):
            ground_truth = row["reward_model"].get("ground_truth")
        extra_info = dict(row, prompt=req["prompts"][i])
        try:
            value = fn(data_source=data_source, solution_str=completion, ground_truth=ground_truth,
                       extra_info=extra_info)
            results.append(_score_value(value, offset + i))
        except Exception:
            results.append({"error": _trace()})
    return results


def main():
    path, name, style = sys.argv[1], sys.argv[2], sys.argv[3]
    try:
        fn, functions = _load(path, name)
    except BaseException:
        _send({"ready": False, "error": _trace()})
        return
    if fn is None or not callable(fn):
        _send({"ready": False, "missing": name, "functions": functions})
        return
    style = _style(fn, name, style)
    _send({"ready": True, "style": style, "functions": functions, "python": sys.version.split()[0]})
    score = _verl if style == "verl" else _trl
    for line in sys.stdin:
        req = json.loads(line)
        try:
            results = score(fn, req, req.get("offset", 0))
        except BaseException:
            trace = _trace()
            results = [{"error": trace} for _ in req["completions"]]
        _send({"results": results})


main()
