"""One input checkpoint, opened once: loaded safely, its MobileOne detected, checked against what
the user said (``--arch``/``--config``), validated, and its BatchNorm eps settled.

Every job (convert, verify, export, eval, quant) starts from :func:`open_source`, so the rules of
reading an input live here and run once per input.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..arch.layouts import TensorEntry
from ..arch.specs import ArchSpec, expect_arch
from ..errors import BadInput
from ..rules.limits import check_bn_eps, resolve_eps
from ..timing import Steps, step
from .detect import Detection, TensorInfo, detect_layout, tensor_info
from .read import Checkpoint, load_checkpoint, loading_notes
from .sanity import check_finite, preflight

__all__ = ["LoadOptions", "Source", "open_source", "recorded_eps"]


@dataclass
class LoadOptions:
    """How to read an input checkpoint; shared by every command that reads one."""

    arch: Optional[ArchSpec] = None  # the architecture the user expects (--arch / --config)
    arch_source: Optional[str] = None  # '--config FILE' when arch came from a config
    eps: Optional[float] = None  # --bn-eps; None: the config's eps, else DEFAULT_EPS
    prefix: Optional[str] = None
    ema: bool = False
    trust: Any = False  # True: unpickle every file in full; a TrustList: only the files it names


@dataclass
class Source:
    """A loaded checkpoint and the MobileOne found in it."""

    path: str
    checkpoint: Checkpoint
    detection: Detection
    state_dict: Dict[str, Any]  # every tensor of the file, under the layout's full names
    eps: float
    notes: List[str] = field(default_factory=list)
    # {key: (dtype, shape)} of the state dict as read (before mixed float dtypes are unified)
    tensors: Dict[str, TensorInfo] = field(default_factory=dict)
    eps_from: str = "default"  # '--bn-eps', the config, 'metadata' (the file's own) or 'default'

    @property
    def entries(self) -> tuple:
        return self.detection.entries()

    def mobileone(self) -> Dict[str, Any]:
        """Only the MobileOne's tensors, keyed as its layout names them (no prefix)."""
        pfx = self.detection.prefix
        return {e.key: self.state_dict[pfx + e.key] for e in self.entries}

    def full_keys(self, entries: List[TensorEntry]) -> List[str]:
        return [self.detection.prefix + e.key for e in entries]


def open_source(path: str, options: Optional[LoadOptions] = None, *,
                refuse_non_finite: bool = True, steps: Optional[Steps] = None) -> Source:
    """Load ``path`` and find its MobileOne; BadInput (exit 2) on anything that cannot be used.

    ``refuse_non_finite=False`` keeps NaN/Inf in the MobileOne: a deploy file under verification
    that holds them simply fails the check, naming the block.  ``steps`` times 'load' (reading
    the file) and 'detect' (finding, checking and validating the MobileOne)."""
    from .remote import local_path

    options = options or LoadOptions()
    path = local_path(os.fspath(path))  # a name (apple:s0, hf-hub:...): its checked cache file
    arch = options.arch
    eps = resolve_eps(options.eps, arch.bn_eps if arch is not None else None,
                      options.arch_source or "--arch")
    eps_from = ("--bn-eps" if options.eps is not None else
                (options.arch_source or "--arch") if arch is not None and arch.bn_eps is not None
                else "default")
    with step(steps, "load"):
        ck = load_checkpoint(path, ema=options.ema, trust=options.trust)
    stored = recorded_eps(ck.metadata, path)
    if eps_from == "default" and stored is not None and stored != eps:
        eps, eps_from = stored, "metadata"
    with step(steps, "detect"):
        src = _found(path, ck, options, arch, eps, refuse_non_finite)
    src.eps_from = eps_from
    if eps_from == "metadata" and src.detection.form == "train":  # a deploy model has no BN
        src.notes.append(f"BatchNorm eps {eps:g}, as recorded in the file's metadata "
                         f"(--bn-eps overrides it)")
    return src


def recorded_eps(metadata: Dict[str, str], path: str) -> Optional[float]:
    """The ``bn_eps`` that ``mobileone convert`` records in a file's metadata, or None (none
    recorded, or a value that is no valid eps: the default then applies, as for any file)."""
    value = (metadata or {}).get("bn_eps")
    if value is None:
        return None
    try:
        return check_bn_eps(value, f"{path}: metadata bn_eps")
    except BadInput:
        return None


def _found(path: str, ck: Checkpoint, options: LoadOptions, arch: Optional[ArchSpec], eps: float,
           refuse_non_finite: bool) -> Source:
    sd = ck.state_dict
    tensors = tensor_info(sd)
    det = detect_layout(tensors, prefix=options.prefix, where=path)
    notes = loading_notes(ck)
    if det.implied_root:  # an mmpretrain backbone saved alone: work on the layout's full names
        sd = {det.implied_root + k: v for k, v in sd.items()}
        notes.append(f"mmpretrain backbone saved without its {det.implied_root!r} root")
    if arch is not None:
        det.arch = expect_arch(arch, det.arch, det.form, where=path,
                               source=options.arch_source or "--arch",
                               compare_head=options.arch_source is not None)
    if refuse_non_finite:
        check_finite(sd, [det.prefix + e.key for e in det.entries()], path)
    notes += preflight(sd, det, eps, path)  # mixed dtypes, variances, NaN outside the MobileOne
    return Source(path=path, checkpoint=ck, detection=det, state_dict=sd, eps=eps, notes=notes,
                  tensors=tensors)
