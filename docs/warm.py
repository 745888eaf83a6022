"""A warm ``mobileone`` for the documents' commands: fork of a process that has already imported
torch and the runtimes and exported once to each of them.

Every command of a document runs through bash exactly as written; only the ``mobileone`` it
finds first on PATH is this module's client, which hands its argument list, working folder,
environment and its own stdin/stdout/stderr (the file descriptors, so pipes and redirections are
bash's) to a server.  The server forks, the child becomes the command (``entry_point()`` of the
package, the console script's own function) and its exit status is the client's.  What this
saves is the start-up a document pays per command: importing torch and the exporters, and the
first torch.export of a process (1-5 s a command), paid once per server instead.

    python docs/warm.py SOCKET ARGS...     # the client (imports no torch)
    python docs/warm.py SOCKET --python -c CODE ARGS...   # ``python -c`` alike
    python docs/warm.py --serve SOCKET     # the server (prints 'ready' once it listens)
    python docs/warm.py --serve SOCKET --imports-only   # torch and the package only (tests)

The server forks only from its main thread with no other thread alive (checked after the
warm-up; with another thread it refuses to start and the documents run commands cold).
"""
from __future__ import annotations

import json
import os
import socket
import struct
import sys

HEADER = struct.Struct("!I")
STATUS = struct.Struct("!i")


def client(path: str, argv: list) -> int:
    """Run ``mobileone ARGV`` (``--python -c CODE ...``: that script) in the server at
    ``path``; its exit status."""
    python = argv[:1] == ["--python"]
    payload = json.dumps({"argv": argv[1:] if python else argv, "python": python,
                          "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        socket.send_fds(conn, [HEADER.pack(len(payload)) + payload], [0, 1, 2])
        data = b""
        while len(data) < STATUS.size:
            chunk = conn.recv(STATUS.size - len(data))
            if not chunk:
                print("docs/warm.py: the server went away", file=sys.stderr)
                return 3
            data += chunk
    return STATUS.unpack(data)[0]


# Imported before serving: none of them starts a thread (onnxruntime and litert_torch do, so
# they are left to each command; jax, 0.8 s of LiteRT's import, does not).  The rich and Pillow
# modules are the ones the package imports inside functions, as it does its own job and render
# modules: each command would import them again (~0.1 s a command).
RUNTIME_MODULES = ("executorch.exir",
                   "executorch.backends.xnnpack.partition.xnnpack_partitioner", "onnx",
                   "onnxscript", "coremltools", "jax")
WARM_MODULES = ("rich.box", "rich.console", "rich.markup", "rich.progress", "rich.table",
                "rich.text", "PIL.Image", "PIL.ImageDraw", "PIL.ImageFont", "PIL.ImageOps",
                "PIL.features")


def _warm_up(runtimes: bool = True) -> None:
    """Import torch and the whole CLI; with ``runtimes``, also the thread-free parts of the
    runtimes, and export a tiny network once to ONNX and ExecuTorch (a process's first export
    pays for tracing machinery, the ONNX function registry and XNNPACK's pattern graphs, which
    later ones reuse)."""
    import importlib
    import importlib.util
    import pkgutil
    import tempfile

    import torch

    import mobileone_cli
    from mobileone_cli.arch.specs import ArchSpec
    from mobileone_cli.cli import cli  # noqa: F401  (the commands' modules)
    from mobileone_cli.models.mobileone import MobileOne

    for name in WARM_MODULES + (RUNTIME_MODULES if runtimes else ()):
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            importlib.import_module(name)
    for module in pkgutil.walk_packages(mobileone_cli.__path__, "mobileone_cli."):
        try:  # the whole package: commands import their job and render modules when they run
            importlib.import_module(module.name)
        except ImportError:  # a module of an optional dependency that is not installed
            pass
    if not runtimes:
        return
    tiny = ArchSpec(name="warm", stem_channels=8, widths=(8, 16), blocks=(1, 1),
                    conv_branches=(1, 1), se_blocks=(0, 0), num_classes=4)
    model, sample = MobileOne(tiny, deploy=True).eval(), torch.zeros(1, 3, 32, 32)
    program = torch.export.export(model, (sample,))
    if importlib.util.find_spec("tqdm") is not None:  # ExecuTorch's progress bars: no monitor
        import tqdm  # thread (it would make forking unsafe)

        tqdm.tqdm.monitor_interval = 0
    with tempfile.TemporaryDirectory() as folder:
        if importlib.util.find_spec("executorch") is not None:
            from mobileone_cli.runtimes import executorch

            executorch.lower(program, os.path.join(folder, "warm.pte"))
        if importlib.util.find_spec("onnxscript") is not None:
            from mobileone_cli.runtimes import onnx

            onnx.export(model, os.path.join(folder, "warm.onnx"), sample=sample,
                        dynamic_batch=True, dynamic_size=False, opset=None,
                        exporter="dynamo", output_name="logits")


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _child(job: dict, fds: list) -> None:
    """Become the command: its stdio, folder, environment and arguments, then the console
    script's function (or the ``python -c`` script); never returns."""
    import atexit
    import traceback

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    code = 0
    try:
        if job.get("python"):  # python -c CODE ARGS: CODE as __main__, argv and path as python's
            import types

            sys.argv = ["-c", *job["argv"][2:]]
            sys.path[0] = ""
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(job["argv"][1], "<string>", "exec"), main.__dict__)
        else:
            from mobileone_cli.cli import entry_point

            sys.argv = ["mobileone", *job["argv"]]
            entry_point()
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            code = int(exc.code or 0)
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # what the interpreter would print for an uncaught exception
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def start_server(path: str, *, runtimes: bool = True):
    """``--serve path`` in a subprocess, started and listening: its Popen, or None (killed)
    when it did not come up.  One OpenMP thread (a thread pool started by the warm-up would
    make forking unsafe); this checkout first on PYTHONPATH."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    argv = [sys.executable, os.path.abspath(__file__), "--serve", path]
    proc = subprocess.Popen(argv + ([] if runtimes else ["--imports-only"]), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() == "ready":
        return proc
    proc.kill()
    proc.wait()
    return None


def serve(path: str, runtimes: bool = True) -> int:
    """Accept clients until killed.  Each connection gets a waiter (a fork of this process)
    that forks the command and reports its exit status, so commands run concurrently: the two
    ends of ``mobileone ... | python -c ...`` are both clients, and the reader must not wait
    for a writer queued behind it."""
    import signal

    _warm_up(runtimes)
    import gc

    gc.collect()
    gc.freeze()  # a child's collections skip the warm-up's objects: their pages stay shared
    if _threads() != 1:
        print(f"not ready: {_threads()} threads after the warm-up", flush=True)
        return 1
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # waiters are reaped by the kernel
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(16)
        print("ready", flush=True)
        while True:
            conn, _ = server.accept()
            msg, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
            if not msg:
                conn.close()
                continue
            size = HEADER.unpack(msg[:HEADER.size])[0]
            body = msg[HEADER.size:]
            while len(body) < size:
                body += conn.recv(size - len(body))
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:  # the waiter
                server.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                pid = os.fork()
                if pid == 0:
                    conn.close()
                    _child(json.loads(body), fds)
                for fd in fds:
                    os.close(fd)
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
                conn.sendall(STATUS.pack(128 - code if code < 0 else code))
                os._exit(0)
            for fd in fds:
                os.close(fd)
            conn.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        sys.exit(serve(sys.argv[2], runtimes="--imports-only" not in sys.argv[3:]))
    sys.exit(client(sys.argv[1], sys.argv[2:]))
