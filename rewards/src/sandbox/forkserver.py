# Orchard's sandbox fork server (see rewards/src/sandbox/forkserver.rs). Runs as PID 1 of a bubblewrap sandbox
# (`--as-pid-1`, with CAP_SYS_ADMIN and CAP_NET_ADMIN inside the sandbox's user namespace only): signals sent from inside cannot kill
# it, and when it exits everything inside dies.
#
# Protocol on fd 0 / fd 1 (moved to private descriptors at start; no run can see them):
#   request: one JSON line {"program", "timeout", "cpu", "memory", "nproc", "fsize", "max_output"}
#   reply:   one JSON line {"exit_code", "signal", "stop", "out", "err", "error"} followed by `out` bytes of stdout
#            and `err` bytes of stderr. `stop` is null, "timeout", "stdout" or "stderr" (which output passed its
#            cap); `error` is set when the sandbox itself failed to set the run up.
#
# Each run gets namespaces of its own, so nothing of one run reaches the next and no run can reach the server:
#   keeper (forked from the server before the run's request arrives, so that this costs no run any time): new
#       mount, PID, network (loopback up), IPC and UTS namespaces; fresh tmpfs on /tmp (size: the server's
#       argument) and /dev/shm, a fresh mqueue; given the request it writes /tmp/main.py and forks
#   init (PID 1 of the run's PID namespace): mounts the run's /proc, forks the run's main process, reaps every
#       orphan, and reports the main process's wait status on a pipe when it exits; its exit kills whatever the
#       run left (the kernel ends a PID namespace with its init)
#   main (PID 2, like a fresh bubblewrap sandbox's program): own session, stdin /dev/null, stdout/stderr pipes, no
#       capabilities, no_new_privs, a seccomp filter refusing the kernel keyring calls (keys outlive processes and
#       count against a per-user quota), rlimits, then /tmp/main.py; it ends like an interpreter does (threads
#       joined, atexit handlers run, output flushed) without tearing the interpreter down (~7 ms).
# The server kills the run's init at the deadline, when output passes the cap or as soon as main has exited; the
# run's mounts and namespaces go with it. The server, keeper and init are not dumpable: a run can neither ptrace
# them nor open their /proc entries; the server's PID is not even visible to it. The server's freed memory is not
# scrubbed: a run could find bytes of earlier requests and of earlier runs' output in its forked copy of the heap. Imports are kept to what the
# protocol needs (no `random`, whose state would be shared by every forked run).
import ctypes
import json
import os
import resource
import select
import signal
import struct
import sys
import time

LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
SHM_SIZE = 8 << 20
MAIN = "/tmp/main.py"
READ = 1 << 16
# Records on the status pipe: (b"P", init's pid) from the keeper, (b"S", main's wait status) from init; either may
# arrive first.
STATUS = struct.Struct("<ci")
# Size of each run's /tmp (bytes), the server's one argument.
TMP_SIZE = int(sys.argv[1])


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


# Not dumpable (inherited by the keeper and init): a run (same uid) can neither ptrace them nor open their /proc
# entries (the protocol pipes among them). Without that guarantee there is no server.
check(LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
REQ = os.dup(0)
REP = os.dup(1)
DEVNULL = os.open("/dev/null", os.O_RDWR)
os.dup2(DEVNULL, 0)
os.dup2(DEVNULL, 1)
for fd in (REQ, REP, DEVNULL):
    os.set_inheritable(fd, False)
# A fresh interpreter turns SIGINT into KeyboardInterrupt; here it must not reach the server.
signal.signal(signal.SIGINT, signal.SIG_IGN)


def read_request(buf):
    start = 0
    while True:
        end = buf.find(b"\n", start)
        if end >= 0:
            return bytes(buf[:end]), buf[end + 1 :]
        start = len(buf)
        chunk = os.read(REQ, READ)
        if not chunk:
            return None, buf
        buf += chunk


def write_all(data):
    view = memoryview(data)
    while view:
        view = view[os.write(REP, view) :]


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(LIBC.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), "mount %s" % target)


def rlimit(value):
    return resource.RLIM_INFINITY if value >= (1 << 63) - 1 else value


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def keyring_filter():
    # seccomp-BPF: add_key, request_key and keyctl fail with EPERM (as do x32 and foreign-architecture calls).
    machine = os.uname().machine
    table = {"x86_64": (0xC000003E, (248, 249, 250)), "aarch64": (0xC00000B7, (217, 218, 219))}
    if machine not in table:
        return None
    arch, calls = table[machine]
    # 0 load arch; 1 foreign arch -> deny; 2 load nr; 3 x32 call -> deny; 4.. keyring call -> deny; allow; deny.
    deny = 5 + len(calls)
    prog = [(0x20, 0, 0, 4), (0x15, 0, deny - 2, arch), (0x20, 0, 0, 0), (0x35, deny - 4, 0, 0x40000000)]
    prog += [(0x15, deny - (4 + i) - 1, 0, nr) for i, nr in enumerate(calls)]
    prog += [(0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x00050000 | 1)]
    filters = (SockFilter * len(prog))(*[SockFilter(*f) for f in prog])
    return SockFprog(len(prog), filters), filters


KEYRING_FILTER = keyring_filter()
if KEYRING_FILTER is None:
    # Without the filter, runs of one server would share the kernel keyring: no fork server here.
    sys.exit("orchard fork server: no seccomp filter for %s" % os.uname().machine)


def drop_privileges():
    check(LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient capabilities")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    check(LIBC.capset(header, data), "capset")
    check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if KEYRING_FILTER is not None:
        check(LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(KEYRING_FILTER[0]), 0, 0), "seccomp")
    check(LIBC.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")


def loopback_up():
    # A new network namespace starts with `lo` down; bubblewrap brings it up, so does this (SIOCSIFFLAGS through
    # libc: importing `socket` would cost a fork ~5 ms).
    fd = LIBC.socket(2, 2, 0)  # AF_INET, SOCK_DGRAM
    if fd < 0:
        check(-1, "socket")
    try:
        ifreq = ctypes.create_string_buffer(struct.pack("16sH22x", b"lo", 0x1 | 0x40), 40)  # IFF_UP | IFF_RUNNING
        check(LIBC.ioctl(fd, 0x8914, ifreq), "bringing lo up")  # SIOCSIFFLAGS
    finally:
        LIBC.close(fd)


def fail_setup(err_w, what, e):
    os.write(err_w, ("orchard sandbox: %s failed: %s\n" % (what, e)).encode())
    os._exit(125)


def keeper(out_w, err_w, status_w, go_r):
    # Prepared before its request arrives: the run's namespaces and mounts. Then the request, main.py, init.
    try:
        os.close(REQ)
        os.close(REP)
        flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
        check(LIBC.unshare(flags), "unshare")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=%d,mode=1777" % TMP_SIZE)
        mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=%d,mode=1777" % SHM_SIZE)
        mount("mqueue", "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
        loopback_up()
    except BaseException as e:
        fail_setup(err_w, "setting up the run's namespaces", e)
    chunks = []
    while True:
        chunk = os.read(go_r, READ)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(go_r)
    if not chunks:
        os._exit(0)  # the server is gone or shutting down
    try:
        req = json.loads(b"".join(chunks))
        with open(MAIN, "wb") as f:
            f.write(req["program"].encode("utf-8", "surrogatepass"))
        init = os.fork()
    except BaseException as e:
        fail_setup(err_w, "starting the run", e)
    if init == 0:
        run_init(req, out_w, err_w, status_w)
    os.write(status_w, STATUS.pack(b"P", init))
    # Stay until init ends: init dies with its parent (PR_SET_PDEATHSIG).
    os.close(out_w)
    os.close(err_w)
    os.close(status_w)
    while True:
        try:
            os.waitpid(init, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            break
    os._exit(0)


def run_init(req, out_w, err_w, status_w):
    try:
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # A session (and process group) of its own, visible in the run's PID namespace, as a sandbox's init has.
        os.setsid()
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        main = os.fork()
    except BaseException as e:
        fail_setup(err_w, "starting the run's init", e)
    if main == 0:
        run_main(req, out_w, err_w)
    os.close(out_w)
    os.close(err_w)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        if pid == main:
            break
    os.write(status_w, STATUS.pack(b"S", status))
    os._exit(0)


def run_main(req, out_w, err_w):
    # In the run's main process: become the run (nothing of the protocol stays reachable), then execute main.py.
    try:
        os.setsid()
        os.dup2(DEVNULL, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.closerange(3, 1 << 16)
        drop_privileges()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        cpu = rlimit(req["cpu"])
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (rlimit(req["fsize"]),) * 2)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu if cpu == resource.RLIM_INFINITY else cpu + 1))
        resource.setrlimit(resource.RLIMIT_NPROC, (rlimit(req["nproc"]),) * 2)
        resource.setrlimit(resource.RLIMIT_AS, (rlimit(req["memory"]),) * 2)
        os.chdir("/tmp")
    except BaseException as e:
        fail_setup(2, "setting up the run", e)
    import builtins
    import types

    module = types.ModuleType("__main__")
    module.__file__ = MAIN
    module.__builtins__ = builtins
    module.__spec__ = None
    sys.modules["__main__"] = module
    sys.argv[:] = ["main.py"]
    try:
        with open(MAIN, "rb") as f:
            code = compile(f.read(), MAIN, "exec")
        exec(code, module.__dict__)
        status = 0
    except SystemExit as e:
        status = exit_status(e.code)
    except BaseException as e:
        tb = e.__traceback__
        # Drop this function's frame: the traceback starts at the program, as a fresh interpreter prints it.
        if tb is not None and tb.tb_frame.f_code is run_main.__code__:
            e = e.with_traceback(tb.tb_next)
        sys.excepthook(type(e), e, e.__traceback__)
        status = 1
        if isinstance(e, KeyboardInterrupt):
            # As the interpreter does after the traceback: die of SIGINT.
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:
                    pass
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    finish(status)


def exit_status(code):
    # What the interpreter does with an uncaught SystemExit (an int beyond a C long becomes -1).
    if code is None:
        return 0
    if isinstance(code, int):
        return code if -(1 << 63) <= code < (1 << 63) else -1
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
    # As interpreter teardown does: standard streams restored, __main__'s globals released (finalizers, __del__,
    # generators' finally blocks, files left open are flushed), then the streams flushed.
    try:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        module = sys.modules.get("__main__")
        if module is not None:
            for name in list(module.__dict__):
                if name != "__builtins__":
                    module.__dict__[name] = None
        import gc

        gc.collect()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and not stream.closed:
                stream.flush()
        except BaseException as e:
            status = status or 120
            try:
                sys.stderr.write("Exception ignored while flushing %s: %r\n" % (stream.name, e))
            except BaseException:
                pass
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
    # Everything of the run is in its own PID namespace and dies with its init; wait until it is gone (and catch
    # anything that is not, to be safe).
    for _ in range(1000):
        reap()
        pids = others()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.0005)


def collect_inflight():
    # Descriptors a run left "in flight" (sent over a Unix socket that is itself only in flight) outlive all its
    # processes until the kernel's Unix-socket garbage collector runs, which closing a Unix socket triggers.
    fds = (ctypes.c_int * 2)()
    if LIBC.socketpair(1, 1, 0, fds) == 0:  # AF_UNIX, SOCK_STREAM
        LIBC.close(fds[0])
        LIBC.close(fds[1])


def supervise(keeper_pid, out_r, err_r, status_r, req):
    deadline = time.monotonic() + req["timeout"]
    cap = req["max_output"]
    streams = {out_r: bytearray(), err_r: bytearray()}
    open_fds = [out_r, err_r]
    status = bytearray()
    status_open = True
    stop = None
    while stop is None and status_open and len(status) < 2 * STATUS.size:
        left = deadline - time.monotonic()
        if left <= 0:
            stop = "timeout"
            break
        ready, _, _ = select.select(open_fds + [status_r], [], [], left)
        pump(ready, open_fds, streams)
        if status_r in ready:
            data = os.read(status_r, 64)
            status += data
            status_open = bool(data)
        stop = over_cap(streams, out_r, err_r, cap)
    records = dict(STATUS.unpack_from(status, i) for i in range(0, len(status) - STATUS.size + 1, STATUS.size))
    if b"P" in records:
        try:
            os.kill(records[b"P"], signal.SIGKILL)
        except OSError:
            pass
    try:
        os.kill(keeper_pid, signal.SIGKILL)
    except OSError:
        pass
    os.waitpid(keeper_pid, 0)
    sweep()
    collect_inflight()
    # Everything is dead: what is left in the pipes is bounded and ends in EOF.
    while open_fds and stop is None:
        ready, _, _ = select.select(open_fds, [], [], 0.25)
        if not ready:
            break
        pump(ready, open_fds, streams)
        stop = over_cap(streams, out_r, err_r, cap)
    for fd in (out_r, err_r, status_r):
        os.close(fd)
    out, err = bytes(streams[out_r][: cap + 1]), bytes(streams[err_r][: cap + 1])
    head = {"exit_code": None, "signal": None, "stop": stop, "out": len(out), "err": len(err), "error": None}
    if b"S" in records:
        code = os.waitstatus_to_exitcode(records[b"S"])
        head["exit_code"] = code if code >= 0 else None
        head["signal"] = -code if code < 0 else None
    elif stop is None and b"P" not in records:
        head["error"] = err.decode("utf-8", "replace").strip() or "the run's keeper died before starting it"
    elif stop is None:
        # The run's init died before its main process ended (the run made it fail): the run was killed.
        head["signal"] = signal.SIGKILL
    return json.dumps(head).encode() + b"\n" + out + err


def prepare():
    # Fork the next run's keeper now, so that its namespaces are made while no run waits for them. In the keeper
    # this returns its descriptors; in the server, the keeper's pid and the server's ends of its pipes.
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    status_r, status_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (out_r, err_r, status_r, go_w):
            os.close(fd)
        return True, (out_w, err_w, status_w, go_r)
    for fd in (out_w, err_w, status_w, go_r):
        os.close(fd)
    return False, (pid, out_r, err_r, status_r, go_w)


def serve():
    buf = bytearray()
    while True:
        in_keeper, fds = prepare()
        if in_keeper:
            return fds
        pid, out_r, err_r, status_r, go_w = fds
        line, buf = read_request(buf)
        if line is None:
            os.close(go_w)
            os.waitpid(pid, 0)
            return None
        req = json.loads(line)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(go_w, view) :]
        except BrokenPipeError:
            pass  # the keeper failed; its error is on its stderr
        os.close(go_w)
        write_all(supervise(pid, out_r, err_r, status_r, req))
        del req, line


RUN = serve()
if RUN is not None:
    keeper(*RUN)
