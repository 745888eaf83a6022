"""MobileOne model configs in YAML, shaped like mmpretrain's model dict.

A config names a built-in variant or describes a new one, optionally wrapped the way mmpretrain
writes models::

    name: my_net                      # optional: how output names the variant
    model:                            # optional wrapper (ImageClassifier)
      backbone:
        type: MobileOne
        arch: s0                      # a built-in name, or a mapping (below)
      head: {num_classes: 10, in_channels: 1024}   # `head: null` = backbone only

An ``arch`` mapping takes our ArchSpec names (``widths``, ``blocks``, ``conv_branches``,
``se_blocks``, ``stem_channels``, ``kernel_size``, ``num_classes``, ...), mmpretrain's names where
they map cleanly (``num_blocks``, ``width_factor`` (x 64/128/256/512), ``num_conv_branches``,
``num_se_blocks``) and ``base: sN`` to start from a built-in and override fields.  Without
``stem_channels`` the stem is min(64, first width), mmpretrain's rule; ``conv_branches`` may be
one number for every stage; ``se_blocks`` defaults to none.  A BatchNorm eps (``norm_cfg.eps``,
mmpretrain's spelling, or ``bn_eps``) becomes the spec's ``bn_eps`` and reaches the fusion.
Every problem is one line naming the field (``model.backbone.arch.widths``) and what is wrong.

This module parses and validates what a config says; :mod:`mobileone_cli.io.configfile` reads
the file.  It never imports torch.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import BadInput
from ..rules.limits import MAX_ALIASES, MAX_CHANNELS, MAX_CONFIG_BYTES, MAX_STAGES
from .fields import Fields, cut, join, quote, type_name
from .specs import ArchSpec, builtin_archs, match_builtin

__all__ = ["config_from_text", "parse_config", "BASE_CHANNELS", "MAX_CONFIG_BYTES"]

BASE_CHANNELS = (64, 128, 256, 512)  # mmpretrain's widths for width_factor 1.0, stage1..4

# mmpretrain arch-dict names -> ArchSpec names.
ALIASES = {"num_blocks": "blocks", "num_conv_branches": "conv_branches",
           "num_se_blocks": "se_blocks"}
LIST_FIELDS = ("widths", "blocks", "conv_branches", "se_blocks")
INT_FIELDS = ("stem_channels", "kernel_size", "num_classes", "in_channels", "stem_conv_branches")
FLOAT_FIELDS = ("se_ratio", "bn_eps")
ARCH_KEYS = (("base", "name", "width_factor") + LIST_FIELDS + tuple(ALIASES) + INT_FIELDS
             + FLOAT_FIELDS)

# Keys mmpretrain configs carry that do not change which tensors a checkpoint holds.
IGNORED_MODEL = ("data_preprocessor", "init_cfg", "train_cfg", "pretrained")
IGNORED_BACKBONE = ("out_indices", "frozen_stages", "norm_eval", "init_cfg", "deploy", "conv_cfg")
IGNORED_HEAD = ("loss", "topk", "cal_acc", "init_cfg")


def _read_yaml(text: str, path: str) -> Any:
    """yaml.safe_load, bounded: no alias bombs, no nesting that exhausts the stack, no huge ints."""
    import yaml

    class Loader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):  # every alias (*ref) passes through here
            if self.check_event(yaml.AliasEvent):
                Loader.aliases += 1
                if Loader.aliases > MAX_ALIASES:
                    raise BadInput(f"{path}: more than {MAX_ALIASES} YAML aliases; a model "
                                   f"config needs none")
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise BadInput(f"{path}: unreadable YAML{where}: {cut(str(problem))}") from None
    except RecursionError:
        raise BadInput(f"{path}: YAML nested too deeply for a model config") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise BadInput(f"{path}: unreadable YAML: {cut(str(exc))}") from None


def config_from_text(text: str, path: str) -> ArchSpec:
    """The ArchSpec of the YAML config ``text`` read from ``path`` (named in messages and the
    default variant name); :func:`mobileone_cli.io.configfile.load_config` reads the file."""
    data = _read_yaml(text, path)
    stem = os.path.basename(path)
    if stem.lower().endswith((".yaml", ".yml")):
        stem = stem.rsplit(".", 1)[0]
    return parse_config(data, where=path, default_name=stem or "custom")


def parse_config(data: Any, *, where: str = "config", default_name: str = "custom") -> ArchSpec:
    """Validate an already-parsed config (the YAML's top-level object) into an ArchSpec."""
    f = Fields(where)
    if data is None:
        raise BadInput(f"{where}: empty config", hint="see examples/custom_3stage.yaml")
    top = f.mapping(data, "(top level)")
    name = f.text(top["name"], "name") if "name" in top else None
    if "model" in top:
        f.known(top, "", ("name", "model"))
        model = f.mapping(top["model"], "model")
        base = "model"
    else:
        model = top
        base = ""
    allowed_model = ("type", "backbone", "neck", "head") + IGNORED_MODEL
    f.known(model, base, allowed_model + (("name",) if not base else ()))
    if "type" in model and model["type"] != "ImageClassifier":
        raise f.fail(join(base, "type"),
                     f"must be ImageClassifier, not {quote(model['type'])}")
    if "backbone" not in model:
        raise f.fail(join(base, "backbone"), "missing",
                     hint="e.g. backbone: {type: MobileOne, arch: s0}")
    kwargs, arch_name, overridden = _backbone(f, model["backbone"], join(base, "backbone"))
    if "neck" in model and model["neck"] is not None:
        neck = f.mapping(model["neck"], join(base, "neck"))
        f.known(neck, join(base, "neck"), ("type",))
        if neck.get("type") != "GlobalAveragePooling":
            raise f.fail(join(base, "neck.type"),
                         f"must be GlobalAveragePooling, not {quote(neck.get('type'))}")
    if "head" in model:
        _head(f, model["head"], join(base, "head"), kwargs)
    name = name or kwargs.pop("name", None)
    kwargs.pop("name", None)
    spec = _build(f, kwargs, base)
    if name is None:
        name = arch_name if (arch_name and not overridden) else (match_builtin(spec) or
                                                                 default_name)
    return dataclasses.replace(spec, name=name)


def _backbone(f: Fields, value: Any, field: str) -> Tuple[Dict[str, Any], Optional[str], bool]:
    """(ArchSpec kwargs, built-in name it started from, whether anything was overridden)."""
    bb = f.mapping(value, field)
    f.known(bb, field, ("type", "arch", "in_channels", "norm_cfg", "act_cfg", "se_cfg", "bn_eps")
            + IGNORED_BACKBONE)
    if bb.get("type", "MobileOne") != "MobileOne":
        raise f.fail(join(field, "type"), f"must be MobileOne, not {quote(bb.get('type'))}",
                     hint="configs describe MobileOne backbones; for other networks that "
                          "contain MobileOne blocks use `convert --generic`")
    if "arch" not in bb:
        raise f.fail(join(field, "arch"), "missing",
                     hint=f"a built-in name ({', '.join(builtin_archs())}) or a mapping")
    arch = bb["arch"]
    overridden = False
    if isinstance(arch, str):
        builtin = _builtin(f, arch, join(field, "arch"))
        arch_name: Optional[str] = builtin
        kwargs = builtin_archs()[builtin].to_dict()
        kwargs.pop("name")
    else:
        kwargs, arch_name = _arch_mapping(f, arch, join(field, "arch"))
        overridden = True
    if "in_channels" in bb:
        kwargs["in_channels"] = f.integer(bb["in_channels"], join(field, "in_channels"), 1)
        overridden = True
    eps_fields = [k for k in ("bn_eps",) if k in bb]
    if isinstance(bb.get("norm_cfg"), Mapping) and "eps" in bb["norm_cfg"]:
        eps_fields.append("norm_cfg.eps")
    if isinstance(arch, Mapping) and "bn_eps" in arch:
        eps_fields.append("arch.bn_eps")
    if len(eps_fields) > 1:
        raise f.fail(join(field, eps_fields[1]), f"given together with {eps_fields[0]}; keep one")
    if "bn_eps" in bb:
        kwargs["bn_eps"] = f.eps(bb["bn_eps"], join(field, "bn_eps"))
    if bb.get("norm_cfg") is not None:
        nc = f.mapping(bb["norm_cfg"], join(field, "norm_cfg"))
        f.known(nc, join(field, "norm_cfg"), ("type", "eps", "momentum", "requires_grad"))
        if nc.get("type", "BN") not in ("BN", "SyncBN", "BN2d"):
            raise f.fail(join(field, "norm_cfg.type"),
                         f"must be BN or SyncBN (fusion folds BatchNorm), not "
                         f"{quote(nc.get('type'))}")
        if "eps" in nc:
            kwargs["bn_eps"] = f.eps(nc["eps"], join(field, "norm_cfg.eps"))
    if bb.get("act_cfg") is not None:
        ac = f.mapping(bb["act_cfg"], join(field, "act_cfg"))
        f.known(ac, join(field, "act_cfg"), ("type", "inplace"))
        if ac.get("type", "ReLU") != "ReLU":
            raise f.fail(join(field, "act_cfg.type"),
                         f"only ReLU is supported (MobileOne's activation), not "
                         f"{quote(ac.get('type'))}")
    if bb.get("se_cfg") is not None:
        sc = f.mapping(bb["se_cfg"], join(field, "se_cfg"))
        f.known(sc, join(field, "se_cfg"), ("ratio",))
        if "ratio" in sc:
            kwargs["se_ratio"] = 1.0 / f.number(sc["ratio"], join(field, "se_cfg.ratio"))
            overridden = True
    return kwargs, arch_name, overridden


def _builtin(f: Fields, name: str, field: str) -> str:
    key = name.lower()
    if key not in builtin_archs():
        raise f.fail(field, f"unknown built-in variant {quote(name)}",
                     hint=f"known: {', '.join(builtin_archs())}; or give a mapping of fields")
    return key


def _arch_mapping(f: Fields, value: Any, field: str) -> Tuple[Dict[str, Any], Optional[str]]:
    arch = f.mapping(value, field)
    f.known(arch, field, ARCH_KEYS)
    for alias, ours in ALIASES.items():
        if alias in arch and ours in arch:
            raise f.fail(join(field, alias), f"given together with {ours!r}; keep one of them")
    if "width_factor" in arch and "widths" in arch:
        raise f.fail(join(field, "width_factor"), "given together with 'widths'; keep one")
    base_name = None
    if "base" in arch:
        base_name = _builtin(f, f.text(arch["base"], join(field, "base")), join(field, "base"))
        kwargs: Dict[str, Any] = builtin_archs()[base_name].to_dict()
    else:
        kwargs = {"num_classes": 1000}
        for need in ("widths", "blocks", "conv_branches"):
            names = [need] + [a for a, o in ALIASES.items() if o == need]
            if need == "widths":
                names.append("width_factor")
            if not any(n in arch for n in names):
                raise f.fail(join(field, need), "missing",
                             hint=f"give {' or '.join(names)}, or start from a built-in "
                                  f"with base: s0")
        kwargs["se_blocks"] = None  # default: no SE, filled in once the stage count is known
    kwargs.pop("name", None)
    if "name" in arch:
        kwargs["name"] = f.text(arch["name"], join(field, "name"))
    for key, raw in arch.items():
        ours = ALIASES.get(key, key)
        sub = join(field, key)
        if key in ("base", "name"):
            continue
        if key == "width_factor":
            if not isinstance(raw, list):
                raise f.fail(sub, f"must be a list (one entry per stage), not {type_name(raw)}")
            if not raw:
                raise f.fail(sub, "is empty; give one factor per stage")
            factors = [f.number(v, f"{sub}[{i}]") for i, v in enumerate(raw)]
            if len(factors) > len(BASE_CHANNELS):
                raise f.fail(sub, f"has {len(factors)} entries; width factors multiply mmpretrain's"
                                  f" {len(BASE_CHANNELS)} base widths {list(BASE_CHANNELS)}",
                             hint="give widths (channel counts) for more stages")
            for i, (b, m) in enumerate(zip(BASE_CHANNELS, factors)):
                if not 1 <= b * m < MAX_CHANNELS + 1:  # a float: 1e307 x 64 is inf, no int
                    raise f.fail(f"{sub}[{i}]", f"{m:g} x {b} gives {b * m:g} channels; a "
                                                f"width lies between 1 and {MAX_CHANNELS:,}")
            kwargs["widths"] = tuple(int(b * m) for b, m in zip(BASE_CHANNELS, factors))
            if "stem_channels" not in arch:
                kwargs["stem_channels"] = max(1, min(64, int(64 * factors[0])))
        elif ours == "conv_branches" and isinstance(raw, int) and not isinstance(raw, bool):
            kwargs[ours] = f.integer(raw, sub, 1, ours)  # one k for every stage: broadcast below
        elif ours in LIST_FIELDS:
            kwargs[ours] = f.int_list(raw, sub, 0 if ours == "se_blocks" else 1, ours)
        elif ours in INT_FIELDS:
            minimum = 0 if ours == "num_classes" else 1
            kwargs[ours] = f.integer(raw, sub, minimum, ours)
            if ours == "num_classes":
                kwargs["_arch_classes"] = kwargs[ours]
        elif ours == "bn_eps":
            kwargs[ours] = None if raw is None else f.eps(raw, sub)  # null: not stated
        elif ours in FLOAT_FIELDS:
            kwargs[ours] = f.number(raw, sub)
    n = len(kwargs["widths"])
    if "stem_channels" not in kwargs and kwargs["widths"]:
        # mmpretrain's rule min(64, int(64 * width_factor[0])), written for widths.
        kwargs["stem_channels"] = min(64, kwargs["widths"][0])
    if isinstance(kwargs.get("conv_branches"), int):
        kwargs["conv_branches"] = (kwargs["conv_branches"],) * n
    if kwargs.get("se_blocks") is None:
        kwargs["se_blocks"] = (0,) * n
    return kwargs, base_name


def _head(f: Fields, value: Any, field: str, kwargs: Dict[str, Any]) -> None:
    if value is None:  # backbone only (detection / segmentation checkpoints)
        kwargs["_head_classes"] = 0
        return
    head = f.mapping(value, field)
    f.known(head, field, ("type", "num_classes", "in_channels") + IGNORED_HEAD)
    if head.get("type", "LinearClsHead") != "LinearClsHead":
        raise f.fail(join(field, "type"), f"must be LinearClsHead (one Linear layer), "
                                           f"not {quote(head.get('type'))}")
    if "num_classes" in head:
        n = f.integer(head["num_classes"], join(field, "num_classes"), 0)
        kwargs["_head_classes"] = n
    if "in_channels" in head:
        kwargs["_head_in"] = f.integer(head["in_channels"], join(field, "in_channels"), 1)


def _build(f: Fields, kwargs: Dict[str, Any], base: str) -> ArchSpec:
    arch_field = join(base, "backbone.arch")
    head_field = join(base, "head")
    head_classes = kwargs.pop("_head_classes", None)
    head_in = kwargs.pop("_head_in", None)
    n = len(kwargs["widths"])
    if not 1 <= n <= MAX_STAGES:
        raise f.fail(join(arch_field, "widths"),
                     f"has {n} stages; a MobileOne has 1 to {MAX_STAGES}")
    for fname in LIST_FIELDS[1:]:
        if len(kwargs[fname]) != n:
            raise f.fail(join(arch_field, fname),
                         f"has {len(kwargs[fname])} entries, but widths has {n} (one per stage)")
    for s, (pairs, n_se) in enumerate(zip(kwargs["blocks"], kwargs["se_blocks"])):
        if n_se > pairs:
            raise f.fail(f"{join(arch_field, 'se_blocks')}[{s}]",
                         f"{n_se} SE blocks but stage {s + 1} has only {pairs} blocks")
    if kwargs.get("kernel_size", 3) % 2 == 0:
        raise f.fail(join(arch_field, "kernel_size"),
                     f"must be odd (padding k // 2 keeps the fusion exact), not "
                     f"{kwargs['kernel_size']}")
    ratio = kwargs.get("se_ratio", 0.0625)
    if ratio > 1:
        raise f.fail(join(arch_field, "se_ratio"), f"must be <= 1, not {ratio:g}")
    arch_classes = kwargs.get("_arch_classes")
    if head_classes is not None:
        if arch_classes is not None and arch_classes != head_classes:
            raise f.fail(join(head_field, "num_classes"),
                         f"is {head_classes}, but {join(arch_field, 'num_classes')} is "
                         f"{arch_classes}; keep one of them")
        kwargs["num_classes"] = head_classes
    fields: Dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v)
                              for k, v in kwargs.items() if not k.startswith("_") and k != "name"}
    spec = ArchSpec(name="custom", **fields)
    last = spec.widths[-1]
    if head_in is not None and head_in != last:
        raise f.fail(join(head_field, "in_channels"),
                     f"is {head_in}, but the last stage has {last} channels")
    c_in = spec.stem_channels
    for s, (width, pairs, n_se) in enumerate(zip(spec.widths, spec.blocks, spec.se_blocks),
                                             start=1):
        if n_se:
            # SE sits on the last n_se pairs; only the stage's first pair sees c_in channels.
            small = min(width, c_in) if n_se == pairs else width
            if int(small * ratio) < 1:
                raise f.fail(join(arch_field, "se_blocks"),
                             f"stage {s}: an SE block on {small} channels with ratio {ratio:g} "
                             f"has no channels left (int({small} * {ratio:g}) = 0)")
        c_in = width
    return spec
