"""mobileone: turn MobileOne training checkpoints into deploy checkpoints, and prove them right.

The public API is importable from here; names that need torch are loaded on first use, so
``import mobileone_cli`` (and every torch-free command) stays fast.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    # architectures and layouts (no torch)
    "ArchSpec": "arch", "BlockSpec": "arch", "get_arch": "arch", "builtin_archs": "arch",
    "LAYOUTS": "layouts", "schema": "layouts", "key_map": "layouts", "remap": "layouts",
    "detect_layout": "detect", "Detection": "detect",
    "read_safetensors_header": "checkpoint",
    # tensors
    "fuse_branches": "fusion", "fuse_block": "fusion", "fuse_state_dict": "fusion",
    "bn_scale_shift": "fusion", "BatchNormStats": "fusion",
    "MobileOne": "model", "build_model": "model", "deploy_copy": "model",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "convert_file": "convert", "convert_state_dict": "convert",
    "check_equivalence": "verify", "compare_outputs": "verify", "verify_files": "verify",
    "verify_state_dicts": "verify",
    "inspect_file": "inspection", "stats_for_arch": "stats", "stats_for_checkpoint": "stats",
    "arch_stats": "counting", "load_config": "config", "parse_config": "config",
    "fuse_generic": "generic", "find_blocks": "generic", "convert_generic_file": "generic",
    "export_file": "export", "convert_many": "batch", "plan_batch": "batch",
    "random_state_dict": "synthetic",
    "MobileOneError": "errors", "BadInput": "errors", "VerificationFailed": "errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'mobileone_cli' has no attribute {name!r}")
