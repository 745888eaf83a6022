"""mobileone: turn MobileOne training checkpoints into deploy checkpoints, and prove them right.

The public API is importable from here; names that need torch are loaded on first use, so
``import mobileone_cli`` (and every torch-free command) stays fast.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY = {
    # architectures and layouts (no torch)
    "ArchSpec": "spec.arch", "BlockSpec": "spec.arch", "get_arch": "spec.arch",
    "builtin_archs": "spec.arch", "LAYOUTS": "spec.layouts", "schema": "spec.layouts",
    "key_map": "spec.layouts", "remap": "spec.layouts", "load_config": "spec.config",
    "parse_config": "spec.config", "detect_layout": "io.detect", "Detection": "io.detect",
    "read_safetensors_header": "io.read", "arch_stats": "stats.counting",
    # tensors
    "fuse_branches": "fuse.fusion", "fuse_block": "fuse.fusion", "fuse_state_dict": "fuse.fusion",
    "bn_scale_shift": "fuse.fusion", "BatchNormStats": "fuse.fusion",
    "fuse_generic": "fuse.generic_fuse", "find_blocks": "fuse.generic",
    "MobileOne": "models.mobileone", "build_model": "models.mobileone",
    "deploy_copy": "models.mobileone", "random_state_dict": "models.synthetic",
    "load_checkpoint": "io.read", "save_checkpoint": "io.write", "LoadOptions": "io.source",
    "open_source": "io.source",
    "judge": "check.verdict", "Verdict": "check.verdict", "compare_outputs": "check.harness",
    "verify_files": "check.verify", "verify_state_dicts": "check.verify",
    "checkpoint_health": "check.health",
    "verify_artifact": "check.verify_artifact", "check_artifact": "check.artifact",
    "load_artifact": "runtimes", "Artifact": "runtimes",
    # the jobs
    "ConvertOptions": "convert", "convert_file": "convert", "convert_state_dict": "convert",
    "convert_generic_file": "convert_generic", "ExportOptions": "export",
    "export_file": "export", "convert_many": "batch", "plan_batch": "batch",
    "inspect_file": "inspection", "stats_for_arch": "stats.report",
    "stats_for_checkpoint": "stats.report",
    "evaluate_files": "evaluate", "EvalReport": "evaluate", "Preprocessing": "data.pipeline",
    "make_preprocessing": "data.pipeline", "open_dataset": "data.folders",
    "quantize_file": "quantize", "QuantOptions": "quantize", "QuantReport": "quantize",
    "MobileOneError": "errors", "BadInput": "errors", "VerificationFailed": "errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'mobileone_cli' has no attribute {name!r}")
