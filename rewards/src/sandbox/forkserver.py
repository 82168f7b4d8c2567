# Orchard's sandbox fork server (see rewards/src/sandbox/forkserver.rs). Runs as PID 1 of a bubblewrap sandbox
# (`--as-pid-1`): signals sent from inside the namespace cannot kill it, and when it exits everything inside dies.
#
# Protocol on fd 0 / fd 1 (moved to private descriptors at start; no run can see them):
#   request: one JSON line {"program", "timeout", "cpu", "memory", "nproc", "fsize", "max_output"}
#   reply:   one JSON line {"exit_code", "signal", "stop", "out", "err"} followed by `out` bytes of stdout and `err`
#            bytes of stderr. `stop` is null, "timeout", "stdout" or "stderr" (which output passed its cap).
# Every run is a child forked from this clean interpreter: own session and process group, stdin /dev/null, its own
# rlimits, /tmp as working directory holding main.py; it ends like an interpreter does (threads joined, atexit
# handlers run, output flushed) without tearing the interpreter down. When the run's main process exits (or at the
# deadline, or when output passes the cap) every other process in the namespace is killed and reaped, then /tmp,
# /dev/shm, POSIX message queues and System V IPC objects are emptied before the next request is read.
#
# The server is not dumpable, so runs cannot reach its descriptors or memory through /proc or ptrace. Its freed
# memory is not scrubbed: a run could find bytes of earlier requests in its forked copy of the heap. Imports are
# kept to what the protocol needs (no `random`, whose state would be shared by every forked run).
import ctypes
import json
import os
import resource
import select
import signal
import sys
import time

LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_DUMPABLE = 4
IPC_RMID = 0
# Not dumpable: a run (same uid) can neither ptrace this process nor open its /proc/1/fd/* (the protocol pipes),
# /proc/1/mem or /proc/1/environ. Without that guarantee there is no server.
if LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
    sys.exit("orchard fork server: prctl(PR_SET_DUMPABLE, 0) failed")
REQ = os.dup(0)
REP = os.dup(1)
DEVNULL = os.open("/dev/null", os.O_RDWR)
os.dup2(DEVNULL, 0)
os.dup2(DEVNULL, 1)
for fd in (REQ, REP, DEVNULL):
    os.set_inheritable(fd, False)
# A fresh interpreter turns SIGINT into KeyboardInterrupt; here it must not reach the server.
signal.signal(signal.SIGINT, signal.SIG_IGN)
MAIN = "/tmp/main.py"
WIPE = ("/tmp", "/dev/shm", "/dev/mqueue")
READ = 1 << 16


def read_request(buf):
    while b"\n" not in buf:
        chunk = os.read(REQ, READ)
        if not chunk:
            return None, buf
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    return json.loads(line), rest


def write_all(data):
    view = memoryview(data)
    while view:
        view = view[os.write(REP, view):]


def others():
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def sweep():
    # Kill everything else in the namespace (processes that left the run's group included) and reap it.
    for _ in range(1000):
        pids = others()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        reap()
        if others():
            time.sleep(0.001)
    reap()


def remove_ipc():
    # System V objects outlive their creators inside the IPC namespace: remove what the run made.
    for kind, remove in (
        ("shm", lambda i: LIBC.shmctl(i, IPC_RMID, None)),
        ("sem", lambda i: LIBC.semctl(i, 0, IPC_RMID)),
        ("msg", lambda i: LIBC.msgctl(i, IPC_RMID, None)),
    ):
        try:
            with open("/proc/sysvipc/" + kind) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            remove(int(row.split()[1]))


def wipe(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        p = os.path.join(path, name)
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                wipe(p)
                os.rmdir(p)
            else:
                os.unlink(p)
        except OSError:
            pass


def child(req, out_w, err_w):
    # In the forked child: become the run (nothing of the protocol stays reachable), then execute main.py.
    try:
        os.setsid()
        os.dup2(DEVNULL, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.closerange(3, 1 << 16)
        LIBC.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        cpu = req["cpu"]
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_NPROC, (req["nproc"], req["nproc"]))
        resource.setrlimit(resource.RLIMIT_AS, (req["memory"], req["memory"]))
        os.chdir("/tmp")
    except BaseException as e:
        os.write(2, ("orchard sandbox: setting up the run failed: %r\n" % (e,)).encode())
        os._exit(125)
    import builtins
    import types

    main = types.ModuleType("__main__")
    main.__file__ = MAIN
    main.__builtins__ = builtins
    main.__spec__ = None
    sys.modules["__main__"] = main
    sys.argv[:] = ["main.py"]
    try:
        with open(MAIN, "rb") as f:
            code = compile(f.read(), MAIN, "exec")
        exec(code, main.__dict__)
        status = 0
    except SystemExit as e:
        status = exit_status(e.code)
    except BaseException as e:
        tb = e.__traceback__
        # Drop this function's frame: the traceback starts at the program, as a fresh interpreter prints it.
        if tb is not None and tb.tb_frame.f_code is child.__code__:
            e = e.with_traceback(tb.tb_next)
        sys.excepthook(type(e), e, e.__traceback__)
        status = 1
    finish(status)


def exit_status(code):
    # What the interpreter does with an uncaught SystemExit.
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    try:
        sys.stderr.write(str(code) + "\n")
    except BaseException:
        pass
    return 1


def finish(status):
    # The parts of interpreter shutdown a program can observe: non-daemon threads are joined, atexit handlers run,
    # buffered output is flushed. Tearing down the rest of the (forked) interpreter would cost ~7 ms per run and
    # affects nothing the run can see, so the process ends here.
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
        import atexit

        atexit._run_exitfuncs()
    except SystemExit as e:
        status = exit_status(e.code)
    except BaseException as e:
        sys.excepthook(type(e), e, e.__traceback__)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            status = status or 120
    os._exit(status & 0xFF)


def pump(ready, open_fds, streams):
    # Append what the ready pipes hold; a pipe at EOF leaves `open_fds`.
    for fd in ready:
        if fd in streams:
            data = os.read(fd, READ)
            if data:
                streams[fd] += data
            else:
                open_fds.remove(fd)


def over_cap(streams, out_r, err_r, cap):
    if len(streams[out_r]) > cap:
        return "stdout"
    if len(streams[err_r]) > cap:
        return "stderr"
    return None


def supervise(pid, out_r, err_r, req):
    deadline = time.monotonic() + req["timeout"]
    cap = req["max_output"]
    pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    streams = {out_r: bytearray(), err_r: bytearray()}
    open_fds = [out_r, err_r]
    stop = None
    while stop is None:
        left = deadline - time.monotonic()
        if left <= 0:
            stop = "timeout"
            break
        watch = open_fds + ([pidfd] if pidfd is not None else [])
        ready, _, _ = select.select(watch, [], [], left if pidfd is not None else min(left, 0.005))
        pump(ready, open_fds, streams)
        stop = over_cap(streams, out_r, err_r, cap)
        if pidfd is not None:
            exited = pidfd in ready
        else:
            exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        if exited:
            break
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    _, status = os.waitpid(pid, 0)
    sweep()
    # Everything is dead: what is left in the pipes is bounded and ends in EOF.
    while open_fds and stop is None:
        ready, _, _ = select.select(open_fds, [], [], 0.25)
        if not ready:
            break
        pump(ready, open_fds, streams)
        stop = over_cap(streams, out_r, err_r, cap)
    for fd in (out_r, err_r) + ((pidfd,) if pidfd is not None else ()):
        os.close(fd)
    out, err = bytes(streams[out_r][: cap + 1]), bytes(streams[err_r][: cap + 1])
    code = os.waitstatus_to_exitcode(status)
    head = {
        "exit_code": code if code >= 0 else None,
        "signal": -code if code < 0 else None,
        "stop": stop,
        "out": len(out),
        "err": len(err),
    }
    return json.dumps(head).encode() + b"\n" + out + err


def serve():
    buf = b""
    while True:
        req, buf = read_request(buf)
        if req is None:
            return
        with open(MAIN, "wb") as f:
            f.write(req["program"].encode("utf-8", "surrogatepass"))
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            return req, out_w, err_w
        os.close(out_w)
        os.close(err_w)
        write_all(supervise(pid, out_r, err_r, req))
        remove_ipc()
        for path in WIPE:
            wipe(path)


RUN = serve()
if RUN is not None:
    child(*RUN)
