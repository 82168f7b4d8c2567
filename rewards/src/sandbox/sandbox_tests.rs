//! Tests of both sandboxes on this machine. Bwrap tests skip (with a message) where bubblewrap cannot run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn policy() -> SandboxPolicy {
    SandboxPolicy { timeout: Duration::from_secs(3), ..Default::default() }
}

fn sandboxes() -> Vec<Arc<dyn Sandbox>> {
    let mut v: Vec<Arc<dyn Sandbox>> = Vec::new();
    match Bwrap::new(SandboxConfig::default()) {
        Ok(b) => v.push(Arc::new(b)),
        Err(e) => eprintln!("skipping bwrap: {e}"),
    }
    v.push(Arc::new(Rlimits::new(SandboxConfig::default()).expect("python3 runs under rlimits")));
    v
}

#[test]
fn ok_error_and_output_are_reported() -> anyhow::Result<()> {
    for sb in sandboxes() {
        let r = sb.run("print('hi')", &policy())?;
        assert_eq!((r.status, r.exit_code, r.stdout.as_str()), (Status::Ok, Some(0), "hi\n"), "{sb:?}");
        let r = sb.run("def f():\n    assert 1 == 2\nf()\n", &policy())?;
        assert_eq!(r.status, Status::Error);
        assert_eq!(r.reason.as_deref(), Some("AssertionError at line 2: assert 1 == 2"), "{r:?}");
        assert_eq!(r.exit_code, Some(1));
    }
    Ok(())
}

#[test]
fn sleeping_past_the_deadline_times_out_on_time() -> anyhow::Result<()> {
    for sb in sandboxes() {
        let p = SandboxPolicy { timeout: Duration::from_millis(500), ..policy() };
        let t = Instant::now();
        let r = sb.run("import time\ntime.sleep(30)", &p)?;
        assert_eq!(r.status, Status::Timeout, "{r:?}");
        assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    }
    Ok(())
}

#[test]
fn memory_bomb_reports_memory() -> anyhow::Result<()> {
    for sb in sandboxes() {
        let p = SandboxPolicy { memory: 256 << 20, ..policy() };
        let r = sb.run("x = bytearray(1 << 30)", &p)?;
        assert_eq!(r.status, Status::Memory, "{r:?}");
    }
    Ok(())
}

#[test]
fn endless_output_is_cut_at_the_cap() -> anyhow::Result<()> {
    for sb in sandboxes() {
        let r = sb.run("while True:\n    print('x' * 1000)", &policy())?;
        assert_eq!(r.status, Status::OutputLimit, "{r:?}");
        assert!(r.stdout.len() <= policy().max_output);
    }
    Ok(())
}

#[test]
fn environment_is_scrubbed() -> anyhow::Result<()> {
    std::env::set_var("ORCHARD_SECRET_TEST_VAR", "leak");
    for sb in sandboxes() {
        let r = sb.run("import os\nprint(sorted(os.environ))", &policy())?;
        assert!(!r.stdout.contains("ORCHARD_SECRET_TEST_VAR"), "{}", r.stdout);
    }
    Ok(())
}

#[test]
fn executor_caches_identical_programs() -> anyhow::Result<()> {
    let sb = sandboxes().remove(0);
    let ex = Executor::new(sb, policy());
    let a = ex.run("print(1 + 1)")?;
    let b = ex.run("print(1 + 1)")?;
    assert!(!a.cached && b.cached);
    assert_eq!(ExecResult { cached: false, ..b }, a, "cached == uncached");
    assert_eq!(ex.stats(), CacheStats { hits: 1, misses: 1 });
    Ok(())
}

#[test]
fn batch_equals_sequential() -> anyhow::Result<()> {
    let sb = sandboxes().remove(0);
    let programs: Vec<String> = (0..6).map(|i| format!("print({i} * {i})")).collect();
    let batch = Executor::with_cache_capacity(sb.clone(), policy(), 0).run_batch(&programs);
    for (i, r) in batch.into_iter().enumerate() {
        let r = r?;
        assert_eq!(r.stdout, format!("{}\n", i * i));
    }
    Ok(())
}

#[test]
fn null_sandbox_refuses() {
    assert!(NullSandbox.run("print(1)", &policy()).is_err());
}
