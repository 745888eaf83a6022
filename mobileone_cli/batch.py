"""Convert many checkpoints in one run: every file is tried; a failure is recorded, not raised.

Output names: each output keeps its input's file name, and therefore its extension and format
(``.safetensors`` stays safetensors, every other extension is a torch file).  Files found in a
source folder keep their path relative to that folder, sub-folders included.  Nothing here imports
torch; :func:`convert_many` calls :func:`convert.convert_file` once per file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .errors import (EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, BadInput, VerificationFailed,
                     is_out_of_memory, most_serious)
from .io.write import CHECKPOINT_EXTENSIONS

__all__ = ["CHECKPOINT_EXTENSIONS", "BatchItem", "is_batch", "find_checkpoints", "plan_batch",
           "convert_many", "batch_exit_code"]



@dataclass
class BatchItem:
    """The outcome of one file of a batch."""

    src: str
    dst: str
    status: str  # 'ok', 'bad input', 'mismatch' or 'internal error'
    exit_code: int
    message: str = ""
    result: Any = None  # convert.ConvertResult (without its state dict) when status is 'ok'

    @property
    def arch(self) -> Optional[str]:
        return self.result.detection.arch.name if self.result is not None else None

    @property
    def layout(self) -> Optional[str]:
        if self.result is None:
            return None
        d = self.result.detection
        return d.layout if d.layout == self.result.layout_out else \
            f"{d.layout} -> {self.result.layout_out}"

    @property
    def max_rel(self) -> Optional[float]:
        """Max rel diff of the check (fused against train, before any --dtype rounding)."""
        m = self.result.metrics if self.result is not None else None
        return m.max_rel if m is not None else None

    @property
    def rounded_rel(self) -> Optional[float]:
        """With --dtype: max rel diff of the rounded model (against train when fused)."""
        r = self.result.rounding if self.result is not None else None
        return r.max_rel if r is not None else None


def is_checkpoint_name(name: str) -> bool:
    return name.lower().endswith(CHECKPOINT_EXTENSIONS) and not name.startswith(".")


def is_batch(sources: Sequence[str], dst: str) -> bool:
    """Several SRCs, a SRC folder, or an existing DST folder: convert file by file into DST."""
    return len(sources) > 1 or any(os.path.isdir(s) for s in sources) or os.path.isdir(dst)


def find_checkpoints(folder: str, skip: Optional[str] = None) -> List[str]:
    """Checkpoint files under ``folder`` (recursively, hidden entries and ``skip`` left out)."""
    found = []
    skip_abs = os.path.abspath(skip) if skip else None
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.abspath(os.path.join(root, d)) != skip_abs)
        found += [os.path.join(root, f) for f in sorted(files) if is_checkpoint_name(f)]
    return found


def plan_batch(sources: Sequence[str], dst_dir: str) -> List[Tuple[str, str]]:
    """(src, dst) pairs for SRC files and folders converted into ``dst_dir``.

    Refuses, before anything is converted, a DST that is a file, inputs that would land on the
    same output path, and a run that finds no checkpoint at all.
    """
    if os.path.exists(dst_dir) and not os.path.isdir(dst_dir):
        raise BadInput(f"{dst_dir}: exists and is not a directory; with several inputs or a "
                       f"folder, DST must be a directory")
    if not os.path.exists(dst_dir) and is_checkpoint_name(os.path.basename(dst_dir)):
        raise BadInput(f"{dst_dir}: with several inputs or a folder, DST must be a directory, "
                       f"not a checkpoint file name")
    pairs: List[Tuple[str, str]] = []
    for src in sources:
        if os.path.isdir(src) and os.path.isdir(dst_dir) and os.path.samefile(src, dst_dir):
            raise BadInput(f"{dst_dir}: DST_DIR is the source folder {src}; choose another "
                           f"folder (outputs keep the input names)")
        if os.path.isdir(src):
            files = find_checkpoints(src, skip=dst_dir)
            if not files:
                raise BadInput(f"{src}: no checkpoint files found (looked for "
                               f"{', '.join(CHECKPOINT_EXTENSIONS)})")
            pairs += [(f, os.path.join(dst_dir, os.path.relpath(f, src))) for f in files]
        else:
            # A missing or unreadable file is reported in its row, like any other bad input.
            pairs.append((src, os.path.join(dst_dir, os.path.basename(src))))
    seen = {}
    for src, dst in pairs:
        key = os.path.normcase(os.path.abspath(dst))
        if key in seen:
            raise BadInput(f"{seen[key]} and {src} would both be written to {dst}",
                           hint="convert them into different folders")
        seen[key] = src
    return pairs


def convert_many(pairs: Sequence[Tuple[str, str]], options: Any = None, *,
                 on_start: Optional[Callable[[int, str], None]] = None,
                 on_done: Optional[Callable[[int, BatchItem], None]] = None,
                 **overrides: Any) -> List[BatchItem]:
    """Convert each (src, dst) with :func:`convert.convert_file` and ``options`` (a
    ConvertOptions, or keyword overrides); never stops early (except on Ctrl-C).  Output folders
    are created as needed."""
    import dataclasses

    from .convert import ConvertOptions, convert_file

    options = dataclasses.replace(options or ConvertOptions(), **overrides)

    items: List[BatchItem] = []
    for i, (src, dst) in enumerate(pairs):
        if on_start:
            on_start(i, src)
        try:
            parent = os.path.dirname(os.path.abspath(dst))
            os.makedirs(parent, exist_ok=True)
            result = convert_file(src, dst, options)
            result.state_dict = None  # keep the summary, free the tensors
            item = BatchItem(src, dst, "ok", EXIT_OK, result=result)
        except VerificationFailed as exc:
            item = BatchItem(src, dst, "mismatch", exc.exit_code, _with_hint(exc))
        except BadInput as exc:
            item = BatchItem(src, dst, "bad input", exc.exit_code, _with_hint(exc))
        except OSError as exc:
            item = BatchItem(src, dst, "bad input", EXIT_BAD_INPUT,
                             f"{dst}: cannot create the output folder ({exc.strerror or exc})")
        except Exception as exc:  # MemoryError included
            if is_out_of_memory(exc):  # the file asks for more memory than there is
                item = BatchItem(src, dst, "bad input", EXIT_BAD_INPUT, f"{src}: out of memory")
            else:  # a bug: record it and go on with the next file
                item = BatchItem(src, dst, "internal error", EXIT_INTERNAL,
                                 f"{src}: {exc.__class__.__name__}: {exc}".splitlines()[0][:300])
        items.append(item)
        if on_done:
            on_done(i, item)
    return items


def _with_hint(exc) -> str:
    return exc.message + (f" ({exc.hint})" if exc.hint else "")


def batch_exit_code(items: Sequence[BatchItem]) -> int:
    """0 when all converted; else the most serious failure: internal 3 > mismatch 1 > bad input 2."""
    return most_serious(it.exit_code for it in items)
