//! Tests of both sandboxes on this machine. Bwrap tests skip (with a message) where bubblewrap cannot run — except
//! under CI (`CI` set, as `.ci/run` does), where a missing bubblewrap fails them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn limits() -> SandboxLimits {
    SandboxLimits { timeout: Duration::from_secs(3), ..Default::default() }
}

/// `Some(sandbox)`, or `None` with a message where bubblewrap cannot run; under CI that is a failure.
fn bwrap_or_skip(made: Result<Bwrap>) -> Option<Bwrap> {
    match made {
        Ok(b) => Some(b),
        Err(e) if std::env::var_os("CI").is_some() => panic!("bubblewrap must run under CI (.ci/run installs it): {e}"),
        Err(e) => {
            eprintln!("skipping bwrap: {e}");
            None
        }
    }
}

fn sandboxes() -> Vec<Arc<dyn Sandbox>> {
    let mut v: Vec<Arc<dyn Sandbox>> = Vec::new();
    if let Some(b) = bwrap_or_skip(Bwrap::new(SandboxConfig::default())) {
        v.push(Arc::new(b));
    }
    v.push(Arc::new(Rlimits::new(SandboxConfig::default()).expect("python3 runs under rlimits")));
    v
}

#[test]
fn ok_error_and_output_are_reported() -> anyhow::Result<()> {
    for sb in sandboxes() {
        let r = sb.run("print('hi')", &limits())?;
        assert_eq!((r.status, r.exit_code, r.stdout.as_str()), (Status::Ok, Some(0), "hi\n"), "{sb:?}");
        let r = sb.run("def f():\n    assert 1 == 2\nf()\n", &limits())?;
        assert_eq!(r.status, Status::Error);
        assert_eq!(r.reason.as_deref(), Some("AssertionError at line 2: assert 1 == 2"), "{r:?}");
        assert_eq!(r.exit_code, Some(1));
    }
    Ok(())
}

#[test]
fn sleeping_past_the_deadline_times_out_on_time() -> anyhow::Result<()> {
    for sb in sandboxes() {
        let p = SandboxLimits { timeout: Duration::from_millis(500), ..limits() };
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
        let p = SandboxLimits { memory: 256 << 20, ..limits() };
        let r = sb.run("x = bytearray(1 << 30)", &p)?;
        assert_eq!(r.status, Status::Memory, "{r:?}");
    }
    Ok(())
}

#[test]
fn endless_output_is_cut_at_the_cap() -> anyhow::Result<()> {
    for sb in sandboxes() {
        let r = sb.run("while True:\n    print('x' * 1000)", &limits())?;
        assert_eq!(r.status, Status::OutputLimit, "{r:?}");
        assert!(r.stdout.len() <= limits().max_output);
    }
    Ok(())
}

#[test]
fn environment_is_scrubbed() -> anyhow::Result<()> {
    std::env::set_var("ORCHARD_SECRET_TEST_VAR", "leak");
    for sb in sandboxes() {
        let r = sb.run("import os\nprint(sorted(os.environ))", &limits())?;
        assert!(!r.stdout.contains("ORCHARD_SECRET_TEST_VAR"), "{}", r.stdout);
    }
    Ok(())
}

#[test]
fn executor_caches_identical_programs() -> anyhow::Result<()> {
    let sb = sandboxes().remove(0);
    let ex = Executor::new(sb, limits());
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
    let batch = Executor::with_cache_capacity(sb.clone(), limits(), 0).run_batch(&programs);
    for (i, r) in batch.into_iter().enumerate() {
        let r = r?;
        assert_eq!(r.stdout, format!("{}\n", i * i));
    }
    Ok(())
}

#[test]
fn null_sandbox_refuses() {
    assert!(NullSandbox.run("print(1)", &limits()).is_err());
}

/// A bwrap sandbox with one slot (so every run goes to the same fork server), or `None` where bwrap cannot run.
fn one_slot_bwrap(fork_server: bool) -> Option<Bwrap> {
    bwrap_or_skip(Bwrap::new(SandboxConfig { concurrency: 1, fork_server, ..Default::default() }))
}

#[test]
fn fork_server_runs_leave_nothing_for_the_next_run() -> anyhow::Result<()> {
    let Some(sb) = one_slot_bwrap(true) else {
        return Ok(());
    };
    let dirty = "import ctypes, os, random, time\n\
                 open('/tmp/left', 'w').write('x')\nopen('/dev/shm/left', 'w').write('x')\nos.mkdir('/tmp/d')\n\
                 os.chmod('/tmp/d', 0)\nassert ctypes.CDLL(None).shmget(0, 4096, 0o1600) >= 0\n\
                 import resource\nresource.prlimit(1, resource.RLIMIT_AS, (64 << 20, 64 << 20))\n\
                 os.chmod('/dev/shm', 0)\nos.chmod('/tmp', 0o555)\nmaster, _ = os.openpty()\n\
                 for d in ('/home', '/root', '/run', '/dev'):\n    try:\n        open(d + '/left', 'w')\n        \
                 print('wrote', d)\n    except OSError:\n        pass\n\
                 if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\n\
                 print(random.random())\n";
    let look =
        "import os, random, resource\nopen('/tmp/mine', 'w').write('x')\nassert os.listdir('/dev/pts') == ['ptmx']\n\
                print(sorted(os.listdir('/tmp')), os.listdir('/dev/shm'), \
                len(open('/proc/sysvipc/shm').readlines()), resource.getrlimit(resource.RLIMIT_AS)[0] >> 20)\n\
                print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()) == sorted({1, os.getpid()}))\n\
                print(random.random())\n";
    let a = sb.run(dirty, &limits())?;
    let b = sb.run(look, &limits())?;
    let c = sb.run(dirty, &limits())?;
    assert_eq!(sb.forked_runs(), 4, "probe + 3 runs forked from the server");
    assert_eq!(a.status, Status::Ok, "{a:?}");
    let lines: Vec<&str> = b.stdout.lines().collect();
    assert_eq!(lines[..2], ["['main.py', 'mine'] [] 1 512", "True"], "{b:?}");
    assert!(!a.stdout.contains("wrote"), "home directories, /run and /dev are read-only: {a:?}");
    // `random` is seeded per run, not inherited from the server.
    assert!(a.stdout != c.stdout && lines[2] != a.stdout.trim(), "{a:?} {b:?} {c:?}");
    Ok(())
}

#[test]
fn fork_server_survives_signals_from_its_runs() -> anyhow::Result<()> {
    let Some(sb) = one_slot_bwrap(true) else {
        return Ok(());
    };
    let quick = SandboxLimits { timeout: Duration::from_millis(400), ..limits() };
    let hostile = [
        "import os, signal\nfor s in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGSTOP):\n    \
         os.kill(os.getppid(), s)\nprint('alive')\n",
        // A child's kill(-1) reaches every process of the namespace but itself and PID 1: the run's main dies.
        "import os, signal\nif os.fork() == 0:\n    os.kill(-1, signal.SIGKILL)\nelse:\n    os.wait()\n    \
         print('alive')\n",
        "import time\ntime.sleep(30)\n",
        "while True:\n    print('x' * 1000)\n",
        "x = bytearray(1 << 30)\n",
    ];
    let want = [Status::Ok, Status::Killed, Status::Timeout, Status::OutputLimit, Status::Memory];
    for (program, want) in hostile.iter().zip(want) {
        let r = sb.run(program, &quick)?;
        assert_eq!(r.status, want, "{r:?}");
        let after = sb.run("print('next')", &quick)?;
        assert_eq!((after.status, after.stdout.as_str()), (Status::Ok, "next\n"), "{after:?}");
    }
    assert_eq!(sb.forked_runs(), 1 + 2 * hostile.len() as u64, "every run forked from the one server");
    Ok(())
}

#[test]
fn fork_server_and_one_shot_sandboxes_give_the_same_results() -> anyhow::Result<()> {
    let (Some(forked), Some(fresh)) = (one_slot_bwrap(true), one_slot_bwrap(false)) else {
        return Ok(());
    };
    let programs = [
        "print('hi')\nimport sys\nprint(sys.argv, __name__, __file__)\nprint('err', file=sys.stderr)\n",
        "def f():\n    assert 1 == 2\nf()\n",
        "x = (\n",
        "import sys\nsys.exit(3)\n",
        "import sys\nsys.exit('bye')\n",
        "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe ok\\n')\n",
        "import os\nos.kill(os.getpid(), 11)\n",
        "import subprocess\nprint(subprocess.run(['true'], stdout=subprocess.DEVNULL).returncode)\n",
        "import threading, time\nthreading.Thread(target=lambda: (time.sleep(0.1), print('thread'))).start()\n",
        "import atexit\natexit.register(lambda: print('at exit'))\nprint('main', end='')\n",
        "from multiprocessing import Pool\nif __name__ == '__main__':\n    with Pool(2) as p:\n        \
         print(p.map(abs, [-1, -2]))\n",
        "raise KeyError('k')\n",
        "import sys\nsys.exit(2 ** 100)\n",
        "raise KeyboardInterrupt\n",
        "import sys\nprint('x')\nsys.stdout.close()\n",
        "import os\nprint(sorted(os.listdir('/tmp')), os.getpid(), os.getppid())\n",
        // Interpreter teardown: __del__, files left open, generators' finally blocks, replaced std streams.
        "class A:\n    def __del__(self):\n        print('bye from __del__')\na = A()\n",
        "out = open(1, 'w', closefd=False)\nout.write('answer 42\\n')\n",
        "def g():\n    try:\n        yield 1\n    finally:\n        print('gen finally')\nx = g()\nnext(x)\n",
        "import sys\nprint('hi')\nsys.stdout = None\n",
        "import io, sys\nprint('real answer')\nsys.stdout = io.StringIO()\nprint('captured')\n",
    ];
    for p in programs {
        let a = forked.run(p, &limits())?;
        let b = fresh.run(p, &limits())?;
        let strip = |r: ExecResult| (r.status, r.exit_code, r.signal, r.stdout, r.stderr, r.reason);
        assert_eq!(strip(a), strip(b), "program {p:?}");
    }
    assert_eq!(forked.forked_runs(), 1 + programs.len() as u64);
    assert_eq!(fresh.forked_runs(), 0);
    Ok(())
}

#[test]
fn runs_cannot_reach_the_fork_server_through_proc() -> anyhow::Result<()> {
    let Some(sb) = one_slot_bwrap(true) else {
        return Ok(());
    };
    // Try to read the server's descriptors, memory and environment, then to forge a reply on each of its pipes.
    let attack = "import os\nseen = []\nfor path in ('/proc/1/fd', '/proc/1/mem', '/proc/1/environ'):\n    \
                  try:\n        os.listdir(path) if path.endswith('fd') else open(path, 'rb').read(1)\n        \
                  seen.append('open')\n    except OSError:\n        seen.append('denied')\nprint(*seen)\n\
                  fake = b'{\"exit_code\": 0, \"signal\": null, \"stop\": null, \"out\": 7, \"err\": 0}\\nforged\\n'\n\
                  for fd in range(64):\n    try:\n        open(f'/proc/1/fd/{fd}', 'wb').write(fake)\n    \
                  except OSError:\n        pass\nraise SystemExit(1)\n";
    let r = sb.run(attack, &limits())?;
    assert_eq!((r.status, r.stdout.as_str()), (Status::Error, "denied denied denied\n"), "{r:?}");
    let next = sb.run("print('next')", &limits())?;
    assert_eq!(next.stdout, "next\n", "the protocol is still in step: {next:?}");
    assert_eq!(sb.forked_runs(), 3);
    Ok(())
}
