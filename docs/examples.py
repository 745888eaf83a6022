"""Run every command shown in README.md and docs/*.md, and keep the shown output real.

A fenced block whose info string is ``console`` is a session: lines starting with ``$ `` are
commands, the lines after one are its output.  A command that exits non-zero ends its output with
a line ``(exit code N)``; a ``console excerpt`` block shows only some lines of the output and is
never rewritten; a ``console excerpt parse-only`` block is run by the test the document names
(here only its command lines must parse: a run would cost the documents a minute).  A ``python`` block is run as a script and must exit 0.  Each document
runs in a fresh folder of its own (where ``examples/`` and ``tests/`` are the repository's,
so committed fixtures can be used), blocks in order (so
a block can use files that earlier ones wrote), at ``COLUMNS=80``.

    python docs/examples.py --update [FILE ...]   # run, and rewrite the outputs shown
    python docs/examples.py --check [FILE ...]    # run, and fail where a shown line is gone

A document that shows optional runtimes declares them in a comment,
``<!-- examples need: executorch litert_torch -->`` (module names): :func:`missing` lists those
not installed, and tests/test_docs.py skips that document with the reason.

Commands run through bash as written; the ``mobileone`` bash finds is a client of a warm server
(docs/warm.py: a fork of a process that has imported torch and the exporters), which saves each
command its start-up.  ``MOBILEONE_DOCS_COLD=1`` runs every command in a fresh interpreter.

Several documents start from the same demo (``mobileone demo``, or a seeded ``mobileone demo
--dir demo ...``): it runs once per process and later documents get its files and its output
(:data:`REPLAYED`), so the docs tests pay for each demo once.

``--check`` compares with numbers masked (timings, sizes and low digits of errors vary from one
machine to the next): every shown line must appear in the real output, in order, and the exit
code must match.  tests/test_docs.py runs the check for every document.
"""
from __future__ import annotations

import argparse
import atexit
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FENCE = re.compile(r"^```(console|python)([ \t]+excerpt)?([ \t]+parse-only)?[ \t]*\n(.*?)^```[ \t]*$",
                   re.M | re.S)
EXIT = re.compile(r"^\(exit code (\d+)\)$")
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?", re.I)
WIDTH = "80"


@dataclass
class Command:
    line: str
    shown: List[str] = field(default_factory=list)
    shown_code: int = 0
    output: List[str] = field(default_factory=list)
    code: int = 0


def documents(paths: Optional[List[str]] = None) -> List[str]:
    if paths:
        return [os.path.abspath(p) for p in paths]
    docs = sorted(os.path.join(HERE, n) for n in os.listdir(HERE) if n.endswith(".md"))
    return [os.path.join(ROOT, "README.md")] + docs


NEEDS = re.compile(r"<!--\s*examples need:\s*([\w. ]+?)\s*-->")


def missing(path: str) -> List[str]:
    """The modules a document declares it needs (``<!-- examples need: ... -->``) that are not
    installed here."""
    import importlib.util

    with open(path, encoding="utf-8") as fh:
        m = NEEDS.search(fh.read())
    return [name for name in (m.group(1).split() if m else [])
            if importlib.util.find_spec(name) is None]


def parse(block: str) -> List[Command]:
    cmds: List[Command] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            cmds.append(Command(line[2:]))
        elif cmds:
            m = EXIT.match(line.strip())
            if m:
                cmds[-1].shown_code = int(m.group(1))
            else:
                cmds[-1].shown.append(line)
    for c in cmds:
        while c.shown and not c.shown[-1].strip():
            c.shown.pop()
    return cmds


def _shims(folder: str) -> str:
    """A bin folder where ``mobileone`` and ``python`` are this checkout's, for bash to find:
    ``mobileone`` and ``python -c`` are the warm server's clients (:mod:`warm`) when one runs."""
    bin_dir = os.path.join(folder, ".bin")
    os.makedirs(bin_dir, exist_ok=True)
    sock = _warm_server()
    py = shlex.quote(sys.executable)
    warm = f"{py} {shlex.quote(os.path.join(HERE, 'warm.py'))} {shlex.quote(sock or '')}"
    shims = {"mobileone": f'exec {warm} "$@"' if sock else f'exec {py} -m mobileone_cli "$@"',
             "python": (f'[ "$1" = -c ] && exec {warm} --python "$@"\n' if sock else "")
             + f'exec {py} "$@"'}
    for name, body in shims.items():
        path = os.path.join(bin_dir, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(f"#!/bin/sh\n{body}\n")
        os.chmod(path, 0o755)
    return bin_dir


_warm: List[Optional[str]] = []  # [socket path, or None where no server could start]


def _warm_server() -> Optional[str]:
    """The socket of this process's warm ``mobileone`` server (docs/warm.py), started on first
    use; None (commands run cold) when MOBILEONE_DOCS_COLD is set or it cannot start."""
    if os.environ.get("MOBILEONE_DOCS_COLD"):
        return None
    if _warm:
        return _warm[0]
    _warm.append(None)
    folder = tempfile.mkdtemp(prefix="mobileone-warm-")
    atexit.register(shutil.rmtree, folder, True)
    sock = os.path.join(folder, "s")
    proc = warm_module().start_server(sock)
    if proc is not None:
        atexit.register(proc.kill)
        _warm[0] = sock
    return _warm[0]


def warm_module():
    """docs/warm.py as a module (this folder is not a package)."""
    import importlib.util

    module = sys.modules.get("docs_warm")
    if module is None:
        spec = importlib.util.spec_from_file_location("docs_warm", os.path.join(HERE, "warm.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["docs_warm"] = module
    return module


# Commands whose files and output are the same wherever they run (the trained demo and the
# seeded synthetic ones write only into their folder, named here), command line -> (a copy of
# that folder, output, exit code).
REPLAYED = re.compile(r"^mobileone (-q )?demo( --synthetic)?(?: --dir (?P<dir>demo))?"
                      r"( --arch s[0-4])?( -q)?$")
_replays: Dict[str, Tuple[str, List[str], int]] = {}
_replay_root: List[str] = []


def _demo_folder(line: str) -> Optional[str]:
    """The folder a replayable demo writes (None: the line is no such demo)."""
    m = REPLAYED.match(line)
    if m is None:
        return None
    return m.group("dir") or "mobileone-demo"


def _replay(cmd: Command, cwd: str, folder: str) -> bool:
    """Give ``cmd`` the files and output of its earlier run, if it had one."""
    done = _replays.get(cmd.line)
    if done is None:
        return False
    shutil.copytree(done[0], os.path.join(cwd, folder), dirs_exist_ok=True)
    cmd.output, cmd.code = list(done[1]), done[2]
    return True


def _remember(cmd: Command, cwd: str, folder: str) -> None:
    if not _replay_root:
        _replay_root.append(tempfile.mkdtemp(prefix="mobileone-docs-demo-"))
        atexit.register(shutil.rmtree, _replay_root[0], True)
    copy = os.path.join(_replay_root[0], str(len(_replays)))
    shutil.copytree(os.path.join(cwd, folder), copy)
    _replays[cmd.line] = (copy, list(cmd.output), cmd.code)


def run(cmd: Command, cwd: str) -> None:
    """One command line, through bash as a user would type it (pipes and $? work); a demo
    shown before is replayed (:data:`REPLAYED`)."""
    folder = _demo_folder(cmd.line)
    replayable = folder is not None and not os.path.exists(os.path.join(cwd, folder))
    if replayable and _replay(cmd, cwd, folder):
        return
    env = dict(os.environ, COLUMNS=WIDTH, LINES="50", TERM="dumb", NO_COLOR="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["PATH"] = _shims(cwd) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(["bash", "-c", cmd.line], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    text = proc.stdout + proc.stderr
    cmd.output = [ln.rstrip() for ln in text.rstrip("\n").splitlines()]
    cmd.code = proc.returncode
    if replayable and cmd.code == 0:
        _remember(cmd, cwd, folder)


BORDER = re.compile(r"^[\s\u2500-\u257f]*$")  # table rules: their width follows the numbers


# A bar of a terminal picture (block elements, and the bound mark '│' among them): its length
# follows the numbers, so it is masked like them.
BAR = re.compile(r"[\u2502 ]*[\u2580-\u259f][\u2580-\u259f\u2502 ]*")


def _norm(line: str) -> str:
    if BORDER.match(line):
        return ""
    return " ".join(BAR.sub(" ▮ ", NUMBER.sub("#", line)).split())


def mismatch(cmd: Command) -> Optional[str]:
    """None when the real output still shows every shown line (numbers masked), in order."""
    if cmd.code != cmd.shown_code:
        return f"exit code {cmd.code}, documented {cmd.shown_code}"
    real = [n for n in (_norm(x) for x in cmd.output) if n]
    i = 0
    for line in cmd.shown:
        want = _norm(line)
        if not want:
            continue
        while i < len(real) and real[i] != want:
            i += 1
        if i == len(real):
            return f"shown line not in the output: {line.strip()!r}"
        i += 1
    return None


def parses(line: str) -> Optional[str]:
    """None when ``mobileone ARGS`` parses (the command and every option exist and take the
    values shown), else click's message.  For a ``console excerpt parse-only`` block, whose
    command a test runs (a run would cost the documents a minute)."""
    import click

    from mobileone_cli.cli import cli

    words = shlex.split(line)
    if words[:1] != ["mobileone"]:
        return "a parse-only block holds only mobileone commands"
    try:
        with cli.make_context("mobileone", words[1:], resilient_parsing=False) as ctx:
            name, cmd, rest = cli.resolve_command(ctx, [*getattr(ctx, "_protected_args", []),
                                                        *ctx.args])
            assert cmd is not None
            cmd.make_context(name, rest, parent=ctx).close()
    except click.ClickException as exc:
        return exc.format_message()
    except click.exceptions.Exit as exc:  # the group's own usage errors, already printed
        return f"does not parse (exit code {exc.exit_code})"
    return None


def render(cmds: List[Command]) -> str:
    out: List[str] = []
    for c in cmds:
        out.append(f"$ {c.line}")
        out.extend(c.output)
        if c.code:
            out.append(f"(exit code {c.code})")
    return "\n".join(out) + "\n"


def process(path: str, update: bool) -> List[str]:
    """Run one document; rewrite it (update) or return its problems (check)."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    problems: List[str] = []
    pieces: List[Tuple[int, int, str]] = []
    with tempfile.TemporaryDirectory(prefix="mobileone-docs-") as cwd:
        for shared in ("examples", "tests"):  # as in a checkout of the repository
            os.symlink(os.path.join(ROOT, shared), os.path.join(cwd, shared))
        for m in FENCE.finditer(text):
            where = os.path.relpath(path, ROOT)
            body = m.group(4)
            if m.group(1) == "python":
                script = Command(f"python -c {shlex.quote(body)}")
                run(script, cwd)
                if script.code:
                    problems.append(f"{where}: python block exits {script.code}: "
                                    + " | ".join(script.output[-3:]))
                continue
            cmds = parse(body)
            excerpt = bool(m.group(2))
            if m.group(3):  # shown, run by the test it names: its command line must parse
                problems += [f"{where}: $ {c.line}: {why}" for c in cmds
                             for why in [parses(c.line)] if why]
                continue
            for c in cmds:
                run(c, cwd)
                why = mismatch(c)
                if why and (not update or excerpt):
                    problems.append(f"{where}: $ {c.line}: {why}")
            if not excerpt:
                pieces.append((m.start(4), m.end(4), render(cmds)))
    if update:
        for start, end, new in reversed(pieces):
            text = text[:start] + new + text[end:]
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    return problems


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--update", action="store_true", help="rewrite the shown outputs")
    mode.add_argument("--check", action="store_true", help="fail where a shown line is gone")
    ap.add_argument("files", nargs="*")
    args = ap.parse_args(argv)
    problems: List[str] = []
    for path in documents(args.files):
        problems += process(path, update=args.update)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
