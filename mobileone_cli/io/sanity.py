"""Numeric sanity of a checkpoint: refuse what cannot be fused honestly, before and after fusion.

A diverged run leaves NaN/Inf; a corrupted file leaves negative variances or tensors without data;
an ``eps`` of 0 turns a dead channel (running_var == 0) into a division by zero.  Each is refused
with one line that names the tensor, instead of writing a deploy file that is silently wrong.
Torch is imported only inside the functions.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Set

from ..errors import BadInput
from ..rules.limits import DEFAULT_EPS
from ..rules.tolerances import short_number

__all__ = ["check_tensor_storage", "unify_float_dtypes",
           "check_bn_stats", "check_fused_finite", "check_finite", "non_finite_keys", "preflight"]

def check_tensor_storage(state_dict: Mapping[str, Any], where: str) -> None:
    """Refuse tensors that hold no readable numbers: meta, sparse or non-CPU tensors."""
    import torch

    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            continue
        if value.is_meta:
            raise BadInput(f"{where}: {key} is a meta tensor (a shape without data); "
                           f"the file holds no weights for it")
        if value.layout != torch.strided:
            raise BadInput(f"{where}: {key} is a {str(value.layout).replace('torch.', '')} "
                           f"tensor; checkpoints of dense tensors only are supported")
        if value.device.type != "cpu":
            raise BadInput(f"{where}: {key} is on {value.device}, not readable here")


def non_finite_keys(state_dict: Mapping[str, Any], keys: Iterable[str]) -> List[str]:
    """The keys among ``keys`` whose floating-point tensor holds a NaN or an Inf."""
    import torch

    by_dtype: Dict[Any, List[str]] = {}
    for k in keys:
        t = state_dict.get(k)
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
            by_dtype.setdefault(t.dtype, []).append(k)
    bad: Set[str] = set()
    for group in by_dtype.values():
        # One fused 2-norm per tensor (NaN and Inf survive it; its vectorized kernel is ~10x
        # the max-|x| one): hundreds of per-tensor calls cost more than reading the numbers.
        # A huge finite tensor can overflow the norm, so a non-finite norm is only a suspect,
        # settled by an exact look at that tensor.
        try:
            norms = torch.stack(torch._foreach_norm([state_dict[k] for k in group], 2))
            suspects = [k for k, ok in zip(group, torch.isfinite(norms).tolist()) if not ok]
        except (AttributeError, RuntimeError, TypeError):  # no foreach kernel for this dtype
            suspects = group
        bad.update(k for k in suspects if not bool(torch.isfinite(state_dict[k]).all()))
    return [k for k in keys if k in bad]


def check_finite(state_dict: Mapping[str, Any], keys: Iterable[str], where: str) -> None:
    """Refuse NaN/Inf anywhere in the MobileOne's tensors (a diverged run)."""
    import torch

    for k in non_finite_keys(state_dict, keys)[:1]:
        bad = int((~torch.isfinite(state_dict[k])).sum())
        raise BadInput(f"{where}: {k} holds {bad} NaN/Inf value(s); the checkpoint is not usable",
                       hint=f"a diverged training run? pick an earlier checkpoint; "
                            f"`mobileone inspect {where}` lists every fault")


def unify_float_dtypes(state_dict: Dict[str, Any], keys: Iterable[str]) -> List[str]:
    """Cast the floating-point tensors of ``keys`` to their widest dtype, in place, if they mix.

    A checkpoint with one fp16 tensor among fp32 ones (an fp16 stem, apex O2's fp32 BatchNorms)
    is fused and checked in the widest dtype, so no tensor loses precision.  Returns notes.
    """
    import torch

    keys = [k for k in keys if isinstance(state_dict.get(k), torch.Tensor)
            and state_dict[k].is_floating_point()]
    dtypes = {state_dict[k].dtype for k in keys}
    if len(dtypes) < 2:
        return []
    wide = next(iter(dtypes))
    for d in dtypes:
        wide = torch.promote_types(wide, d)
    counts = {d: sum(state_dict[k].dtype == d for k in keys) for d in dtypes}
    for k in keys:
        if state_dict[k].dtype != wide:
            state_dict[k] = state_dict[k].to(wide)
    mix = ", ".join(f"{str(d).replace('torch.', '')}: {n}" for d, n in sorted(
        counts.items(), key=lambda item: str(item[0])))
    return [f"mixed float dtypes ({mix} tensors); all read as "
            f"{str(wide).replace('torch.', '')}"]


def check_bn_stats(state_dict: Mapping[str, Any], running_var_keys: Iterable[str], eps: float,
                   where: str) -> List[str]:
    """Refuse variances a BatchNorm cannot have; report dead channels.  Returns notes.

    running_var < 0 is corruption.  running_var == 0 is a dead channel (its input was constant
    during training): with eps > 0 the fold is exact, as in PyTorch's eval mode, so it is only
    reported; with eps == 0 it is a division by zero and refused.
    """
    zero_keys = []
    zeros = 0
    for k in running_var_keys:
        var = state_dict[k]
        negative = int((var < 0).sum())
        if negative:
            raise BadInput(f"{where}: {k} has {negative} negative value(s) (min "
                           f"{float(var.min()):.3g}); a variance cannot be negative",
                           hint=f"the file is corrupt or not a BatchNorm checkpoint; "
                                f"`mobileone inspect {where}` lists every fault")
        n = int((var == 0).sum())
        if n:
            if eps == 0:
                raise BadInput(f"{where}: {k} has {n} channel(s) with running_var == 0 and "
                               f"--bn-eps is 0: the BatchNorm divides by zero",
                               hint=f"pass the eps the model was trained with (PyTorch's "
                                    f"default is {short_number(DEFAULT_EPS)}); "
                                    f"`mobileone inspect {where}` measures "
                                    f"how much eps matters")
            zeros += n
            zero_keys.append(k)
    if not zeros:
        return []
    first = ", ".join(zero_keys[:3]) + (f" and {len(zero_keys) - 3} more" if len(zero_keys) > 3
                                          else "")
    return [f"{zeros} BatchNorm channel(s) have running_var == 0 (dead channels, in {first}); "
            f"folded exactly with eps={eps:g}"]


def check_fused_finite(state_dict: Mapping[str, Any], keys: Iterable[str], where: str) -> None:
    """Refuse a fusion whose result overflows the output dtype (huge gamma / tiny variance)."""
    bad = non_finite_keys(state_dict, keys)
    if bad:
        t = state_dict[bad[0]]
        raise BadInput(f"{where}: fusing overflows {str(t.dtype).replace('torch.', '')} in "
                       f"{bad[0]}" + (f" and {len(bad) - 1} other tensor(s)" if len(bad) > 1
                                      else "")
                       + " (a BatchNorm with huge weight or near-zero variance)",
                       hint=f"the fused weights cannot be stored in this dtype; "
                            f"`mobileone inspect {where}` shows the BatchNorm statistics, the "
                            f"eps sensitivity and the fp16/bf16 range")


def preflight(state_dict: Dict[str, Any], detection: Any, eps: float, where: str) -> List[str]:
    """Every check a detected MobileOne needs before fusion (NaN/Inf is refused beforehand).

    Unifies mixed float dtypes, refuses impossible variances, and reports NaN/Inf in tensors that
    are not the MobileOne's (a neck or head copied through unchanged).  Returns notes.
    """
    entries = detection.entries()
    pfx = detection.prefix
    notes = unify_float_dtypes(state_dict, [pfx + e.key for e in entries if e.kind != "counter"])
    if detection.form == "train":
        var_keys = [pfx + e.key for e in entries if e.key.endswith(".running_var")]
        notes += check_bn_stats(state_dict, var_keys, eps, where)
    others = non_finite_keys(state_dict, detection.extra_keys)
    if others:
        notes.append(f"{len(others)} tensor(s) outside the MobileOne hold NaN/Inf "
                     f"({', '.join(others[:3])}{' ...' if len(others) > 3 else ''}); "
                     f"copied unchanged")
    return notes
