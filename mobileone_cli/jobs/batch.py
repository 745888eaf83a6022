"""Convert many checkpoints in one run: every file is tried; a failure is recorded, not raised.

Output names: ``{stem}{suffix}{ext}`` by default (``mobileone_s0_unfused.pth.tar`` fused becomes
``mobileone_s0_deploy.pth.tar``: a trailing ``_unfused`` gives way to the suffix), or a
``--name`` template with the fields ``{stem}``, ``{suffix}`` and ``{ext}``.  The extension, hence
the format, is the input's.  Files found in a source folder keep their path relative to it.
:func:`convert_many` converts file by file, or in worker processes (``jobs``); results come back
in input order either way.  Nothing here imports torch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_STATUS,
    BadInput,
    MobileOneError,
    exit_code_of,
    most_serious,
)
from ..io.write import CHECKPOINT_EXTENSIONS

__all__ = ["CHECKPOINT_EXTENSIONS", "BatchItem", "is_batch", "find_checkpoints", "plan_batch",
           "convert_many", "check_outputs", "batch_exit_code", "output_name", "default_jobs"]

DEPLOY_SUFFIX = "_deploy"



@dataclass
class BatchItem:
    """The outcome of one file of a batch."""

    src: str
    dst: str
    status: str  # 'ok', 'skipped', 'bad input', 'mismatch' or 'internal error'
    exit_code: int
    message: str = ""
    result: Any = None  # convert.ConvertResult (without its state dict) when status is 'ok'
    facts: dict = field(default_factory=dict)  # what a failed file revealed (arch, layout, ...)
    exists: bool = False  # refused because its output exists (a re-run without --force)

    @property
    def arch(self) -> Optional[str]:
        return self.result.detection.arch.name if self.result is not None else \
            self.facts.get("arch")

    @property
    def layout(self) -> Optional[str]:
        if self.result is None:
            return self.facts.get("layout")
        d = self.result.detection
        return d.layout if d.layout == self.result.layout_out else \
            f"{d.layout} -> {self.result.layout_out}"

    @property
    def max_rel(self) -> Optional[float]:
        """Max rel diff of the check (the decisive comparison of the verdict)."""
        if self.result is None:
            return self.facts.get("max_rel")
        v = self.result.verdict
        return v.decisive.output.max_rel if v is not None else None

    @property
    def rounded_rel(self) -> Optional[float]:
        """With --dtype: max rel diff of the rounded model (against train when fused)."""
        r = self.result.rounding if self.result is not None else None
        return r.max_rel if r is not None else None


def is_checkpoint_name(name: str) -> bool:
    name = os.fspath(name)
    return name.lower().endswith(CHECKPOINT_EXTENSIONS) and not name.startswith(".")


def _split(name: str) -> Tuple[str, str]:
    low = name.lower()
    ext = next((e for e in CHECKPOINT_EXTENSIONS if low.endswith(e)), os.path.splitext(name)[1])
    return name[: len(name) - len(ext)], name[len(name) - len(ext):]


def output_name(name: str, suffix: str = "", template: Optional[str] = None) -> str:
    """The output file name for input file ``name`` (see the module docstring)."""
    stem, ext = _split(name)
    if template is not None:
        try:
            out = template.format(stem=stem, suffix=suffix, ext=ext)
        except (KeyError, IndexError, ValueError) as exc:
            raise BadInput(f"--name {template!r}: fields are {{stem}}, {{suffix}} and {{ext}} "
                           f"({exc.__class__.__name__}: {exc})") from None
        if not out or os.sep in out or out in (".", ".."):
            raise BadInput(f"--name {template!r} makes {out!r} from {name!r}, not a file name")
        return out
    if suffix and stem.lower().endswith(("_unfused", "-unfused")):
        stem = stem[: -len("_unfused")]
    return stem + suffix + ext


def default_jobs(files: int) -> int:
    """One worker per core, never more than files."""
    return max(1, min(files, os.cpu_count() or 1))


def is_batch(sources: Sequence[str], dst: str) -> bool:
    """Several SRCs, a SRC folder, or a DST folder (one that exists, or a name ending in '/'):
    convert file by file into DST."""
    return (len(sources) > 1 or any(os.path.isdir(s) for s in sources) or os.path.isdir(dst)
            or dst.endswith(("/", os.sep)))


def find_checkpoints(folder: str, skip: Optional[str] = None) -> List[str]:
    """Checkpoint files under ``folder`` (recursively, hidden entries and ``skip`` left out)."""
    found = []
    skip_abs = os.path.abspath(skip) if skip else None
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.abspath(os.path.join(root, d)) != skip_abs)
        found += [os.path.join(root, f) for f in sorted(files) if is_checkpoint_name(f)]
    return found


def plan_batch(sources: Sequence[str], dst_dir: str, *, suffix: str = "",
               template: Optional[str] = None) -> List[Tuple[str, str]]:
    """(src, dst) pairs for SRC files and folders converted into ``dst_dir``, named by
    :func:`output_name`.

    Refuses, before anything is converted, a DST that is a file, inputs that would land on the
    same output path, an output that is one of the inputs (:func:`check_outputs`), and a run
    that finds no checkpoint at all.
    """
    sources = [os.fspath(s) for s in sources]
    dst_dir = os.fspath(dst_dir)
    if os.path.exists(dst_dir) and not os.path.isdir(dst_dir):
        raise BadInput(f"{dst_dir}: exists and is not a directory; with several inputs or a "
                       f"folder, DST must be a directory")
    if not os.path.exists(dst_dir) and is_checkpoint_name(os.path.basename(dst_dir)):
        raise BadInput(f"{dst_dir}: with several inputs or a folder, DST must be a directory, "
                       f"not a checkpoint file name")
    pairs: List[Tuple[str, str]] = []
    for src in sources:
        if os.path.isdir(src) and os.path.isdir(dst_dir) and os.path.samefile(src, dst_dir) \
                and not (suffix or template):
            raise BadInput(f"{dst_dir}: DST_DIR is the source folder {src} and the outputs would "
                           f"keep the input names", hint="choose another folder, or --suffix")
        if os.path.isdir(src):
            files = find_checkpoints(src, skip=dst_dir)
            if not files:
                raise BadInput(f"{src}: no checkpoint files found (looked for "
                               f"{', '.join(CHECKPOINT_EXTENSIONS)})")
            for f in files:
                rel = os.path.relpath(f, src)
                pairs.append((f, os.path.join(dst_dir, os.path.dirname(rel),
                                              output_name(os.path.basename(rel), suffix,
                                                          template))))
        else:
            # A missing or unreadable file is reported in its row, like any other bad input.
            pairs.append((src, os.path.join(dst_dir, output_name(os.path.basename(src), suffix,
                                                                 template))))
    check_outputs(pairs, inputs_too=False)  # convert_many checks the inputs (--skip-existing)
    return pairs


def _identity(path: str) -> tuple:
    """What ``path`` is on disk: (device, inode) when it exists (a link or another spelling of
    a file is that file), else its resolved absolute path."""
    try:
        st = os.stat(path)
        return ("file", st.st_dev, st.st_ino)
    except (OSError, ValueError):
        return ("path", os.path.normcase(os.path.realpath(path)))


def check_outputs(pairs: Sequence[Tuple[str, str]], *, inputs_too: bool = True) -> None:
    """Refuse, before anything is written, a batch in which two inputs share one output or
    (``inputs_too``) an output is one of its own inputs, with or without --force: ``m.pth`` ->
    ``m_deploy.pth`` beside a user's ``m_deploy.pth``."""
    inputs: Dict[Any, str] = {}
    for src, _ in pairs if inputs_too else ():
        inputs.setdefault(_identity(src), src)
    outputs: Dict[Any, str] = {}
    for src, dst in pairs:
        key = _identity(dst)
        if key in inputs:
            raise BadInput(f"{dst}: the output of {src} is one of this batch's inputs "
                           f"({inputs[key]}); a batch never writes over its inputs, even with "
                           f"--force; nothing was written",
                           hint="convert into another folder, or choose other names (--suffix, "
                                "--name)")
        if key in outputs:
            raise BadInput(f"{outputs[key]} and {src} would both be written to {dst}; nothing "
                           f"was written", hint="convert them into different folders")
        outputs[key] = src


def convert_many(pairs: Sequence[Tuple[str, str]], options: Any = None, *, jobs: int = 1,
                 skip_existing: bool = False,
                 on_start: Optional[Callable[[int, str], None]] = None,
                 on_done: Optional[Callable[[int, BatchItem], None]] = None,
                 **overrides: Any) -> List[BatchItem]:
    """Convert each (src, dst) with :func:`convert.convert_file` and ``options`` (a
    ConvertOptions, or keyword overrides); never stops early (except on Ctrl-C).

    ``jobs`` > 1 converts in that many worker processes (each computing on one thread); the
    returned items are in the order of ``pairs`` either way.  ``skip_existing`` leaves files whose
    output exists alone (status 'skipped').  Output folders are created as needed."""
    import dataclasses

    from .convert import ConvertOptions

    options = dataclasses.replace(options or ConvertOptions(), **overrides)
    check_outputs([(src, dst) for src, dst in pairs
                   if not (skip_existing and os.path.lexists(dst))])
    todo = []
    items: List[Optional[BatchItem]] = [None] * len(pairs)
    for i, (src, dst) in enumerate(pairs):
        if skip_existing and os.path.lexists(dst):
            skipped = BatchItem(src, dst, "skipped", EXIT_OK, f"{dst} exists (--skip-existing)")
            items[i] = skipped
            if on_done:
                on_done(i, skipped)
        elif not options.force and os.path.lexists(dst):  # a re-run: say both ways on
            refused = BatchItem(src, dst, EXIT_STATUS[EXIT_BAD_INPUT], EXIT_BAD_INPUT,
                                f"{dst}: already exists (use --skip-existing or --force)",
                                exists=True)
            items[i] = refused
            if on_done:
                on_done(i, refused)
        else:
            todo.append(i)
    if jobs <= 1 or len(todo) <= 1:
        for i in todo:
            if on_start:
                on_start(i, pairs[i][0])
            item = items[i] = _convert_one(pairs[i][0], pairs[i][1], options)
            if on_done:
                on_done(i, item)
        return [it for it in items if it is not None]
    from .batch_workers import convert_in_workers

    convert_in_workers(_convert_one, pairs, todo, items, options, jobs, on_done)
    return [it for it in items if it is not None]


def _convert_one(src: str, dst: str, options: Any) -> BatchItem:
    """One file of a batch, every failure turned into its row."""
    from .convert import convert_file

    try:
        parent = os.path.dirname(os.path.abspath(dst))
        os.makedirs(parent, exist_ok=True)
        result = convert_file(src, dst, options)
        result.state_dict = None  # keep the summary, free the tensors
        return BatchItem(src, dst, "ok", EXIT_OK, result=result)
    except MobileOneError as exc:
        code = exit_code_of(exc)
        return BatchItem(src, dst, EXIT_STATUS[code], code, _with_hint(exc), facts=exc.facts)
    except OSError as exc:
        return BatchItem(src, dst, EXIT_STATUS[EXIT_BAD_INPUT], EXIT_BAD_INPUT,
                         f"{dst}: cannot create the output folder ({exc.strerror or exc})")
    except Exception as exc:  # MemoryError included; a bug is recorded and the batch goes on
        code = exit_code_of(exc)
        message = (f"{src}: out of memory" if code == EXIT_BAD_INPUT else
                   f"{src}: {exc.__class__.__name__}: {exc}".splitlines()[0][:300])
        return BatchItem(src, dst, EXIT_STATUS[code], code, message)


def _with_hint(exc) -> str:
    return exc.message + (f" ({exc.hint})" if exc.hint else "")


def batch_exit_code(items: Sequence[BatchItem]) -> int:
    """0 when all converted; else the most serious failure: internal 3 > mismatch 1 > bad
    input 2."""
    return most_serious(it.exit_code for it in items)
