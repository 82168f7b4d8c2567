"""The Python package (`import orchard`, built from python/ with maturin) against the CLI on the same inputs.

.ci/run installs it into its venv with `maturin develop` before pytest runs; the tests need the default model
(fetched by `orchard fetch-model`) and bubblewrap, and fail when either is missing. The CLI binary is taken from
$ORCHARD_BIN, else $CARGO_TARGET_DIR (or ./target)/debug/orchard.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import orchard

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"
ORCHARD = Path(os.environ.get("ORCHARD_BIN", TARGET / "orchard"))

PROMPTS = ["What is 7 times 6?", "Name a prime number larger than 10."]


def cli(*args, stdin=None):
    r = subprocess.run([str(ORCHARD), *map(str, args)], capture_output=True, text=True, input=stdin)
    return r


@pytest.fixture(scope="module")
def engine():
    return orchard.Engine("default")


def test_import_and_version():
    assert orchard.__version__
    assert callable(orchard.rewards.gsm8k)
    assert issubclass(orchard.OrchardError, Exception)


def test_generate_equals_the_cli(engine, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    r = cli("generate", "--prompts", prompts, "-n", 2, "--temperature", 0.8, "--max-new-tokens", 24, "--seed", 5)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    out = engine.generate(PROMPTS, n=2, temperature=0.8, max_new_tokens=24, seed=5)
    assert [len(x) for x in out] == [2, 2]
    got = [(i, j, s.token_ids, s.text, s.finish_reason) for i, per in enumerate(out) for j, s in enumerate(per)]
    want = [(r["prompt_index"], r["sample_index"], r["token_ids"], r["text"], r["finish_reason"]) for r in rows]
    assert got == want
    for per, row in zip([s for per in out for s in per], rows):
        assert per.token_logprobs == pytest.approx(row["token_logprobs"], abs=1e-6)


def test_generate_takes_messages_and_one_prompt(engine):
    a = engine.generate([{"role": "user", "content": PROMPTS[0]}], max_new_tokens=8, temperature=0.0)
    b = engine.generate(PROMPTS[0], max_new_tokens=8, temperature=0.0)
    assert a[0][0].token_ids == b[0][0].token_ids


def test_score_equals_the_cli(engine, tmp_path):
    rows = [{"prompt": PROMPTS[0], "completion": "7 times 6 is 42."}, {"prompt": PROMPTS[1], "completion": "13"}]
    path = tmp_path / "score.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = cli("score", "--input", path)
    assert r.returncode == 0, r.stderr
    want = [json.loads(line) for line in r.stdout.splitlines()]
    got = engine.score([r["prompt"] for r in rows], [r["completion"] for r in rows])
    assert [g.n_tokens for g in got] == [w["n_tokens"] for w in want]
    for g, w in zip(got, want):
        assert g.logprob_sum == pytest.approx(w["logprob_sum"], abs=1e-6)
        assert len(g.token_ids) == g.n_tokens
    with pytest.raises(orchard.OrchardError, match="2 prompts but 1 completions"):
        engine.score(PROMPTS, ["x"])


def test_rewards_have_trls_signature_and_the_clis_scores(tmp_path):
    completions = ["48 / 2 = 24. The answer is 72.", "The answer is 70.", "no number here", "#### 72"]
    answers = ["#### 72"] * 4
    got = orchard.rewards.gsm8k(prompts=["q"] * 4, completions=completions, answer=answers, trainer_state=object())
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"completion": c, "answer": a}) + "\n" for c, a in zip(completions, answers)))
    r = cli("reward", "--kind", "gsm8k", "--input", path)
    assert r.returncode == 0, r.stderr
    assert got == [json.loads(line)["score"] for line in r.stdout.splitlines()]
    assert got[0] == 1.0 and got[2] == 0.0
    # Conversational completions, as TRL passes them: the last message is scored.
    conv = [[{"role": "assistant", "content": c}] for c in completions]
    assert orchard.rewards.gsm8k(prompts=None, completions=conv, answer=answers) == got
    # A row the reward cannot score (no reference) is None, the others are scored.
    assert orchard.rewards.gsm8k(completions=["The answer is 1."]) == [None]
    assert orchard.rewards.get("unit-tests") is orchard.rewards.unit_tests
    names = {e["name"] for e in orchard.rewards.catalog()}
    assert {"gsm8k", "svamp", "humaneval", "pot"} <= names


def test_code_rewards_and_the_sandbox_run_in_bubblewrap():
    tests = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    prompt = "def add(a, b):\n"
    scores = orchard.rewards.humaneval(
        prompts=[prompt, prompt],
        completions=["    return a + b\n", "    return a - b\n"],
        tests=[tests, tests],
        entry_point=["add", "add"],
    )
    assert scores == [1.0, 0.0]
    ok = orchard.sandbox.run("print(6 * 7)")
    assert ok["status"] == "ok" and ok["stdout"].strip() == "42"
    slow = orchard.sandbox.run("while True: pass", timeout="1s")
    assert slow["status"] == "timeout"
    escaped = orchard.sandbox.run("open('/var/tmp/orchard-py-escape', 'w').write('x')")
    assert escaped["status"] == "error" and not os.path.exists("/var/tmp/orchard-py-escape")
    with pytest.raises(orchard.OrchardError, match="unknown field `bogus`"):
        orchard.sandbox.run("print(1)", bogus=1)


def test_sample_returns_a_run_with_the_clis_rows(tmp_path):
    config = {
        "source": {"task": "gsm8k", "split": "train", "limit": 2},
        "n": 3,
        "reward": "gsm8k",
        "seed": 3,
        "sampling": {"temperature": 0.9, "max_new_tokens": 24},
    }
    run = orchard.sample(config, out=tmp_path / "py")
    assert run.manifest["counts"]["trajectories"] == 6
    traj = run.trajectories()
    pairs = run.pairs()
    assert traj.num_rows == 6
    assert pairs.num_rows == run.manifest["counts"]["pairs"]
    if pairs.num_rows:
        assert {"prompt", "chosen", "rejected"} <= set(pairs.column_names)
    assert len(run.trajectories(as_dataset=True)) == 6
    with pytest.raises(orchard.OrchardError, match="only searches write trees"):
        run.trees()
    # The same job through the CLI's TOML file gives the same completions.
    toml = tmp_path / "job.toml"
    toml.write_text(
        'n = 3\nreward = "gsm8k"\nseed = 3\n[source]\ntask = "gsm8k"\nsplit = "train"\nlimit = 2\n'
        "[sampling]\ntemperature = 0.9\nmax_new_tokens = 24\n"
    )
    r = cli("sample", "--config", toml, "--out", tmp_path / "cli")
    assert r.returncode == 0, r.stderr
    cli_traj = orchard.Run(tmp_path / "cli").trajectories()
    key = lambda t: sorted(zip(t.column("task_id").to_pylist(), t.column("completion").to_pylist()))
    assert key(traj) == key(cli_traj)
    # A TOML path works too, and rerunning resumes (nothing more to do).
    again = orchard.sample(toml, out=tmp_path / "cli")
    assert again.manifest["counts"]["trajectories"] == 6


def test_bad_input_raises_orchard_errors_naming_it(tmp_path):
    with pytest.raises(orchard.OrchardError, match="unknown field `nn`"):
        orchard.sample({"nn": 3, "reward": "gsm8k"}, out=tmp_path / "x")
    with pytest.raises(orchard.OrchardError, match="/no/such/model.gguf"):
        orchard.Engine("/no/such/model.gguf")
    with pytest.raises(orchard.OrchardError, match="no_such_reward"):
        orchard.sample({"reward": "no_such_reward", "source": {"limit": 1}}, out=tmp_path / "y")
    with pytest.raises(orchard.OrchardError, match="no_such_reward"):
        orchard.rewards.get("no_such_reward")
    with pytest.raises(orchard.OrchardError, match="missing.toml"):
        orchard.sample(tmp_path / "missing.toml")
    with pytest.raises(orchard.OrchardError, match="column `answer` has 1 values for 2 completions"):
        orchard.rewards.gsm8k(completions=["a", "b"], answer=["1"])
    # The interpreter is still fine.
    assert orchard.rewards.gsm8k(completions=["The answer is 2."], answer=["2"]) == [1.0]


def test_generate_releases_the_gil(engine):
    import threading

    ticks = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.01)

    t = threading.Thread(target=tick)
    t.start()
    start = time.perf_counter()
    engine.generate(PROMPTS, n=4, max_new_tokens=32, temperature=1.0, ignore_eos=True)
    elapsed = time.perf_counter() - start
    stop.set()
    t.join()
    during = [x for x in ticks if start <= x <= start + elapsed]
    # With the GIL held the ticker could not run at all while generating.
    assert len(during) >= max(2, int(elapsed / 0.01 * 0.3)), (len(during), elapsed)
