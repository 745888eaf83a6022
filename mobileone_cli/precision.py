"""What storing a converted checkpoint in half precision costs, measured on forward passes.

Fusion always runs in float64 and rounds once, to the output dtype.  With ``--dtype fp16|bf16`` the
conversion is therefore checked twice: the float32 result of the same fusion against the train
model, with the usual strict tolerance (the fusion must be right), and the half-precision result
against both, which is reported, not judged (the rounding is what the user asked for).  The
half-precision model is computed in float32 from its upcast weights: this measures what the
weights' rounding costs, independently of the arithmetic of whatever runtime will execute them,
and is exact and fast on any CPU (native float16 convolutions on CPU take minutes for s4).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["DTYPES", "Rounding", "parse_dtype", "dtype_name", "rounding_check"]

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
COMPUTE = "float32, weights upcast from the rounded values"


@dataclass
class Rounding:
    """Cost of rounding the converted weights to ``dtype``."""

    dtype: str  # 'float16' or 'bfloat16'
    vs_fp32: Any  # verify.Metrics: rounded model against the unrounded result of the same conversion
    vs_train: Any = None  # verify.Metrics: rounded deploy model against the train model (when fused)
    compute: str = COMPUTE

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["vs_fp32"] = self.vs_fp32.to_dict()
        d["vs_train"] = self.vs_train.to_dict() if self.vs_train is not None else None
        return d


def parse_dtype(name: Optional[str]):
    """'fp16' / 'bf16' / 'fp32' (or the torch names) -> torch dtype; None stays None."""
    if name is None:
        return None
    import torch

    from .errors import BadInput

    key = DTYPES.get(name.lower(), name.lower())
    if key not in DTYPES.values():
        raise BadInput(f"--dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return getattr(torch, key)


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def rounding_check(ref_sd: Mapping[str, Any], low_sd: Mapping[str, Any], arch, *, form: str,
                   layout: str, train_sd: Optional[Mapping[str, Any]] = None,
                   train_layout: Optional[str] = None, bn_eps: Optional[float] = None,
                   seed: int = 0, input_size: Tuple[int, int] = (224, 224)
                   ) -> Tuple[Any, Rounding]:
    """(train vs ``ref_sd`` metrics or None, Rounding) on one batch of seeded images.

    ``ref_sd`` is the conversion's result at the source precision, ``low_sd`` the same rounded to
    half precision; both in ``layout`` and ``form``.  With ``train_sd`` (fused conversions) the train
    model is run once and both deploy models are compared with it.
    """
    import torch

    from .verify import compare_outputs, load_model, seeded_inputs

    logits = arch.has_head
    with torch.no_grad():
        ref_model = load_model(ref_sd, arch, form, layout=layout, bn_eps=bn_eps,
                               dtype=torch.float32)
        x = seeded_inputs(seed, 1, input_size, arch.in_channels, torch.float32)
        ref = ref_model(x)
        del ref_model
        low_model = load_model(low_sd, arch, form, layout=layout, bn_eps=bn_eps,
                               dtype=torch.float32)
        low = low_model(x)
        del low_model
        fusion = vs_train = None
        if train_sd is not None:
            train_model = load_model(train_sd, arch, "train", layout=train_layout or layout,
                                     bn_eps=bn_eps, dtype=torch.float32)
            train = train_model(x)
            fusion = compare_outputs(train, ref, logits=logits)
            vs_train = compare_outputs(train, low, logits=logits)
    low_dtype = next(v.dtype for v in low_sd.values() if v.is_floating_point())
    return fusion, Rounding(dtype=dtype_name(low_dtype), vs_fp32=compare_outputs(ref, low, logits),
                            vs_train=vs_train)
