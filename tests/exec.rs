//! `orchard exec`: one JSON object per run, human-readable limits, batch mode, bad input.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::orchard;

fn exec_json(program: &str, extra: &[&str]) -> anyhow::Result<(Value, i32)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("prog.py");
    std::fs::write(&file, program)?;
    let out = orchard().arg("exec").arg(&file).args(extra).output()?;
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8(out.stdout)?;
    let json: Value = serde_json::from_str(stdout.trim())
        .map_err(|e| anyhow::anyhow!("{e}: stdout {stdout:?}, stderr {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok((json, code))
}

#[test]
fn exec_prints_one_json_object_with_the_documented_keys() -> anyhow::Result<()> {
    let (j, code) = exec_json("print('hello')", &[])?;
    assert_eq!(code, 0);
    for key in ["status", "exit_code", "stdout", "stderr", "wall_ms", "reason"] {
        assert!(j.get(key).is_some(), "{key} missing in {j}");
    }
    assert_eq!(j["status"], "ok");
    assert_eq!(j["exit_code"], 0);
    assert_eq!(j["stdout"], "hello\n");
    assert!(j["reason"].is_null());
    Ok(())
}

#[test]
fn exec_reports_errors_with_the_failing_line() -> anyhow::Result<()> {
    let (j, code) = exec_json("x = 1\nassert x == 2, 'x is not two'\n", &[])?;
    assert_eq!(code, 1);
    assert_eq!(j["status"], "error");
    assert_eq!(j["exit_code"], 1);
    assert_eq!(j["reason"], "AssertionError: x is not two at line 2: assert x == 2, 'x is not two'");
    Ok(())
}

#[test]
fn exec_limits_take_human_units() -> anyhow::Result<()> {
    let t = Instant::now();
    let (j, _) = exec_json("import time\ntime.sleep(10)", &["--timeout", "300ms"])?;
    assert_eq!(j["status"], "timeout");
    assert!(t.elapsed() < Duration::from_millis(1300), "{:?}", t.elapsed());
    let (j, _) = exec_json("x = bytearray(400 << 20)", &["--memory", "256MiB"])?;
    assert_eq!(j["status"], "memory", "{j}");
    let (j, _) = exec_json("print('y' * 5000)", &["--max-output", "1KiB"])?;
    assert_eq!(j["status"], "output_limit");
    orchard().args(["exec", "x.py", "--timeout", "5 parsecs"]).assert().code(2);
    orchard().args(["exec", "x.py", "--memory", "lots"]).assert().code(2);
    Ok(())
}

#[test]
fn exec_batch_runs_jsonl_in_order_with_row_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("batch.jsonl");
    let mut text = String::new();
    for i in 0..5 {
        text.push_str(&serde_json::to_string(&serde_json::json!({ "program": format!("print({i} * 10)") }))?);
        text.push('\n');
    }
    text.push_str("\"print('plain string row')\"\n{not json\n{\"code\": 1}\n");
    std::fs::write(&file, text)?;
    let out = orchard().args(["exec", "--jsonl"]).arg(&file).output()?;
    assert_eq!(out.status.code(), Some(1), "error rows make the exit status 1");
    let rows: Vec<Value> =
        String::from_utf8(out.stdout)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(rows.len(), 8);
    for (i, r) in rows.iter().take(5).enumerate() {
        assert_eq!(r["row"], i);
        assert_eq!(r["stdout"], format!("{}\n", i * 10));
    }
    assert_eq!(rows[5]["stdout"], "plain string row\n");
    assert!(rows[6]["error"].as_str().is_some_and(|e| e.contains(":7: malformed JSON")), "{}", rows[6]);
    assert!(rows[7]["error"].as_str().is_some_and(|e| e.contains(":8: field `program`")), "{}", rows[7]);
    Ok(())
}

#[test]
fn exec_rejects_unreadable_input_clearly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bad.py");
    std::fs::write(&file, b"print('a')\n\xff\xfe\n")?;
    let out = orchard().arg("exec").arg(&file).output()?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr)?;
    assert!(err.contains("not valid UTF-8 (at byte 11)"), "{err}");
    let out = orchard().args(["exec", "/nonexistent/prog.py"]).output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)?.contains("error: reading /nonexistent/prog.py"));
    Ok(())
}

#[test]
fn exec_explicit_rlimits_fallback_says_so_in_the_result() -> anyhow::Result<()> {
    let (j, _) = exec_json("print(1)", &["--sandbox", "rlimits"])?;
    assert_eq!(j["isolation"], "rlimits");
    assert_eq!(j["status"], "ok");
    Ok(())
}

/// Fail closed: without bubblewrap the default sandbox refuses to run model-written code (which would otherwise
/// write to the host's /tmp), says how to install it, and runs it under rlimits only when asked by name.
#[test]
fn without_bubblewrap_code_is_refused_unless_rlimits_is_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let marker = std::env::temp_dir().join(format!("orchard-fail-closed-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let prog = dir.path().join("p.py");
    std::fs::write(&prog, format!("open({:?}, 'w').write('x')\n", marker.display().to_string()))?;
    // A PATH with no bwrap on it (the interpreter is named explicitly).
    let empty = dir.path().join("bin");
    std::fs::create_dir(&empty)?;
    let o = crate::util::orchard()
        .env("PATH", &empty)
        .args(["exec", "--python", "/usr/bin/python3"])
        .arg(&prog)
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "ran without a sandbox: {err}");
    assert!(err.contains("apt-get install bubblewrap") && err.contains("--sandbox rlimits"), "{err}");
    assert!(!marker.exists(), "the program ran and wrote {}", marker.display());
    // Named explicitly, the rlimits sandbox runs it (and says so).
    let o = crate::util::orchard()
        .env("PATH", &empty)
        .args(["exec", "--sandbox", "rlimits", "--python", "/usr/bin/python3"])
        .arg(&prog)
        .output()?;
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("\"isolation\":\"rlimits\""),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let _ = std::fs::remove_file(&marker);
    Ok(())
}
