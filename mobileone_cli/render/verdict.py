"""The shared verdict (check.verdict.Verdict) as plain data: convert, verify and export print it
the same way."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

__all__ = ["verdict_to_dict", "finite_json", "metrics_to_dict"]


def metrics_to_dict(m) -> Optional[Dict[str, Any]]:
    return m.to_dict() if m is not None else None


def _stage(stage, label) -> Optional[Dict[str, Any]]:
    if stage is None:
        return None
    return {
        "precision": stage.precision, "passed": stage.passed,
        "output": metrics_to_dict(stage.output),
        "output_bound_rel": (stage.output_bound / stage.output.scale
                             if stage.output.scale else None),
        "sensitivity": metrics_to_dict(stage.sensitivity),
        "bad_blocks": list(stage.bad_blocks),
        "bad_blocks_labels": [label(b) for b in stage.bad_blocks],
    }


def verdict_to_dict(v) -> Dict[str, Any]:
    """Everything the verdict rests on; the network's conditioning included.  Blocks keep
    their canonical ``name``; ``label`` names them as the deploy file does (``stages.1.5
    (stage2.5)``)."""
    first_bad, first_div = v.first_bad, v.first_divergent
    growth = None
    blocks = v.fp32.blocks
    if blocks and blocks[0].scale > 0:
        growth = max(b.scale for b in blocks) / blocks[0].scale
    return {
        "passed": v.passed, "summary": v.summary(), "decided_in": v.decisive.precision,
        "rtol": v.rtol, "atol": v.atol, "adaptive_tolerance": v.adaptive,
        "deploy_dtype": v.deploy_dtype, "unit_roundoff": v.unit, "compared": v.compared,
        "rounding_explained": v.rounding_explained,
        "conditioning": {
            "rounding_amplification": v.amplification,
            "activation_growth": growth,
            "train_fp32_vs_fp64": metrics_to_dict(v.train_fp32_vs_fp64),
            "first_divergent_fp32": first_div.name if first_div is not None else None,
            "first_divergent_fp32_label": (v.label(first_div.name) if first_div is not None
                                           else None),
        },
        "fp32": _stage(v.fp32, v.label), "fp64": _stage(v.fp64, v.label),
        "first_bad_block": (dict(first_bad.to_dict(), label=v.label(first_bad.name))
                            if first_bad is not None else None),
    }


def finite_json(obj: Any) -> Any:
    """inf/NaN become null (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(x) for k, x in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(x) for x in obj]
    return obj
