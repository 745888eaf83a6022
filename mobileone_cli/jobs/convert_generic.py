"""``convert --generic``: fuse every MobileOne-style block of any checkpoint file (FastViT,
MobileCLIP, custom networks), check each against its branches, write atomically.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..errors import BadInput, VerificationFailed
from ..fuse.generic import Kernel
from ..fuse.generic_fuse import GenericReport, block_bounds, check_blocks, fuse_generic
from ..rules.limits import DEFAULT_EPS
from ..timing import Steps

__all__ = ["GenericResult", "convert_generic_file", "generic_patterns"]


def generic_patterns(blocks_file: Optional[str] = None) -> tuple:
    """The built-in block patterns, after those of a ``--blocks`` file (which win ties)."""
    from ..arch.blocks import PATTERNS

    if blocks_file is None:
        return PATTERNS
    from ..io.blocksfile import load_blocks

    return load_blocks(os.fspath(blocks_file)) + PATTERNS


@dataclass
class GenericResult:
    src: str
    dst: Optional[str]
    report: GenericReport
    checks: Dict[str, float] = field(default_factory=dict)  # path -> max rel diff
    bounds: Dict[str, float] = field(default_factory=dict)  # path -> its bound (block_bounds)
    size_in: int = 0
    size_out: int = 0
    notes: List[str] = field(default_factory=list)
    state_dict: Optional[Dict[str, Any]] = None
    timings: Dict[str, float] = field(default_factory=dict)  # seconds per step

    @property
    def max_rel(self) -> Optional[float]:
        return max(self.checks.values()) if self.checks else None


def convert_generic_file(src: str, dst: Optional[str], *, eps: float = DEFAULT_EPS,
                         force: bool = False,
                         verify: bool = True, groups: Optional[int] = None,
                         norm_kernel: Optional[Kernel] = None, ema: bool = False,
                         trust: bool = False, rtol: Optional[float] = None,
                         seed: int = 0, blocks_file: Optional[str] = None) -> GenericResult:
    """``convert --generic``: fuse every MobileOne-style block of any checkpoint file.

    Keys keep their names (a ``module.``/``model.`` prefix stripped on loading is put back), an
    mmpretrain/FastViT ``{'state_dict': ...}`` wrapper keeps its ``meta``; nothing is written
    when a block is refused or fails its check.  ``blocks_file`` (``--blocks``) adds the block
    patterns of an in-house naming to the built-in ones.
    """
    from .. import __version__
    from ..io.leftovers import stale_note
    from ..io.read import load_checkpoint, loading_notes
    from ..io.write import check_checkpoint_name, check_destination, output_format, save_checkpoint
    from ..rules.limits import check_bn_eps, check_seed

    src = os.fspath(src)
    eps = check_bn_eps(eps)
    check_seed(seed)
    if dst is not None:
        dst = os.fspath(dst)
        check_destination(dst, force=force, src=src)
        check_checkpoint_name(dst)
    patterns = generic_patterns(blocks_file)
    steps = Steps()
    with steps("load"):
        ck = load_checkpoint(src, ema=ema, trust=trust)
    try:
        with steps("fuse"):
            out, report = fuse_generic(ck.state_dict, eps=eps, groups=groups,
                                       norm_kernel=norm_kernel, patterns=patterns)
    except BadInput as exc:
        raise BadInput(f"{src}: {exc.message}", hint=exc.hint) from None
    result = GenericResult(src=src, dst=dst, report=report, size_in=os.path.getsize(src),
                           timings=steps.seconds)
    if verify:
        with steps("check"):
            result.checks = check_blocks(ck.state_dict, out, report.blocks, eps=eps, seed=seed)
            result.bounds = block_bounds(out, report.blocks, rtol=rtol, seed=seed)
        bad = [(p, r) for p, r in result.checks.items() if not r <= result.bounds[p]]
        if bad:
            path, rel = max(bad, key=lambda pr: pr[1] / max(result.bounds[pr[0]], 1e-300))
            raise VerificationFailed(f"{src}: fused block {path or '(top level)'} differs from its "
                                     f"branches (max rel diff {rel:.3g} > "
                                     f"{result.bounds[path]:.3g}); nothing was written")
    result.notes += loading_notes(ck)
    if ck.stripped_prefix:
        out = {ck.stripped_prefix + k: v for k, v in out.items()}
        result.notes.append(f"kept the key prefix {ck.stripped_prefix!r} in the output")
    if report.already_fused:
        result.notes.append(f"{len(report.already_fused)} block(s) were already fused and passed "
                            f"through")
    if dst is not None:
        container = None
        if ck.wrapper == "state_dict" and output_format(dst) != "safetensors":
            from ..io.meta import plain_data

            # Placeholders (foreign objects never loaded) become strings: output stays weights-only.
            meta = ck.extras.get("meta")
            container = {"meta": plain_data(meta, where=src)} if isinstance(meta, dict) \
                else {}
        metadata = dict(ck.metadata)
        metadata.update({"format": "pt", "mobileone_cli": __version__, "form": "deploy",
                         "fused_blocks": str(len(report.blocks)), "bn_eps": repr(eps)})
        with steps("write"):
            result.size_out = save_checkpoint(
                dst, out, force=force, container=container,
                metadata=metadata if output_format(dst) == "safetensors" else None)
        result.notes += filter(None, [stale_note(dst)])
    result.state_dict = out
    return result
