"""A bounded fuzz of `mobileone convert` (and `inspect`) on mutated real checkpoints.

Every mutated file must end in exit 0 with an output that this test verifies itself (float64
train-form model in eval mode vs the deploy file), or in exit 2 with a one-line error; never exit
3, never a traceback, never a partial output or a temp file.

The quick tier tries QUICK_N mutations, the full run (marked slow) DEFAULT_N; ``pytest --fuzz-n
N`` (or ``MOBILEONE_FUZZ_N=N``) makes the full run N inputs, and ``MOBILEONE_FUZZ_SEED`` picks
other mutations.  Both print how many inputs were tried (``-s``, and the terminal summary).
"""
from __future__ import annotations

import io
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import pytest
import torch
from safetensors.torch import load_file, save

from mobileone_cli.arch.specs import ArchSpec, get_arch
from mobileone_cli.arch.layouts import remap
from mobileone_cli.models.mobileone import MobileOne
from mobileone_cli.models.synthetic import random_state_dict

from .conftest import TINY

DEFAULT_N = 240  # the slow run (--fuzz-n N or MOBILEONE_FUZZ_N=N for more)
QUICK_N = 24  # the quick tier (-m "not slow"): the first mutations of the same sequence
CHECK_SIZE = (32, 32)  # the CLI's built-in verification runs on images of this size here


@dataclass(frozen=True)
class Seed:
    """A real checkpoint file to mutate: arch, layout, form, on-disk format, how it is wrapped."""

    name: str
    arch: ArchSpec
    layout: str
    form: str
    fmt: str  # 'zip', 'legacy' or 'safetensors'
    wrap: str = "bare"  # 'bare', 'mmengine' ({'meta', 'state_dict'}) or 'ddp' ({'model': module.*})

    @property
    def suffix(self) -> str:
        return ".safetensors" if self.fmt == "safetensors" else ".pth"


SEEDS = [
    Seed("apple-train-zip", TINY, "apple", "train", "zip"),
    Seed("mmpretrain-train-legacy", TINY, "mmpretrain", "train", "legacy", "mmengine"),
    Seed("timm-train-safetensors", TINY, "timm", "train", "safetensors"),
    Seed("apple-deploy-zip-ddp", TINY, "apple", "deploy", "zip", "ddp"),
    Seed("timm-deploy-safetensors", TINY, "timm", "deploy", "safetensors"),
    Seed("mmpretrain-train-zip", TINY, "mmpretrain", "train", "zip", "mmengine"),
]
REAL_SEED = Seed("s1-apple-train-zip", get_arch("s1"), "apple", "train", "zip")


def fuzz_count(config) -> int:
    n = config.getoption("--fuzz-n", default=None) or os.environ.get("MOBILEONE_FUZZ_N")
    return int(n) if n else DEFAULT_N


# ----------------------------------------------------------------------------- writing files

def wrap(seed: Seed, sd: Dict[str, Any]) -> Any:
    if seed.wrap == "mmengine":
        return {"meta": {"epoch": 3, "mmengine_version": "0.10.0"}, "state_dict": sd}
    if seed.wrap == "ddp":
        return {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}
    return sd


def unwrap(obj: Any) -> Dict[str, Any]:
    """The test's own reading of the containers it wrote (independent of the library's)."""
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj:
        obj = obj["model"]
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def read(path: str) -> Dict[str, Any]:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:2] != b"PK" and head[:1] != b"\x80":
        return load_file(path)
    return unwrap(torch.load(path, map_location="cpu", weights_only=True))


# ----------------------------------------------------------------------------- mutations

def _pick_tensor(rng: random.Random, sd: Dict[str, Any], pred=lambda k, v: True) -> str:
    keys = [k for k, v in sd.items() if isinstance(v, torch.Tensor) and pred(k, v)]
    return rng.choice(keys)


def m_rename(rng, sd):
    k = _pick_tensor(rng, sd)
    how = rng.choice(["suffix", "digit", "case", "drop-part"])
    if how == "suffix":
        new = k + rng.choice(["_", ".x", "0"])
    elif how == "digit":
        new = "".join(str((int(c) + 1) % 10) if c.isdigit() and rng.random() < 0.5 else c
                      for c in k)
    elif how == "case":
        new = k.upper()
    else:
        parts = k.split(".")
        parts.pop(rng.randrange(len(parts)))
        new = ".".join(parts)
    if new == k or new in sd:
        new = k + ".renamed"
    sd = dict(sd)
    sd[new] = sd.pop(k)
    return sd, f"rename {k} -> {new}"


def m_delete(rng, sd):
    k = _pick_tensor(rng, sd)
    sd = dict(sd)
    del sd[k]
    return sd, f"delete {k}"


def m_add(rng, sd):
    base = _pick_tensor(rng, sd)
    new = base.rsplit(".", 1)[0] + rng.choice([".extra", ".weight_orig", ".running_std"])
    sd = dict(sd)
    sd[new] = torch.randn(3)
    return sd, f"add {new}"


def m_shape(rng, sd):
    k = _pick_tensor(rng, sd)
    t = sd[k]
    how = rng.choice(["grow", "shrink", "flatten", "unsqueeze", "scalar", "empty"])
    if how == "grow" and t.dim():
        new = torch.cat([t, t[:1]])
    elif how == "shrink" and t.dim() and t.shape[0] > 1:
        new = t[:-1].clone()
    elif how == "flatten":
        new = t.reshape(-1).clone()
    elif how == "unsqueeze":
        new = t.unsqueeze(0).clone()
    elif how == "empty":
        new = t.new_empty((0,) + tuple(t.shape[1:]))
    else:
        new = t.reshape(-1)[:1].reshape(()).clone() if t.numel() else torch.tensor(1.0)
    sd = dict(sd)
    sd[k] = new
    return sd, f"shape {k} {list(t.shape)} -> {list(new.shape)}"


DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.uint8,
          torch.bool, torch.int32]


def m_dtype(rng, sd):
    dt = rng.choice(DTYPES)
    sd = dict(sd)
    if rng.random() < 0.2 and dt.is_floating_point and dt != torch.bfloat16:
        # the whole checkpoint (fp64, or fp16: both must work or be refused cleanly)
        for k, v in sd.items():
            if v.is_floating_point():
                sd[k] = v.to(dt)
        return sd, f"all float tensors -> {dt}"
    k = _pick_tensor(rng, sd)
    sd[k] = sd[k].to(dt)
    return sd, f"dtype {k} -> {dt}"


def m_nonfinite(rng, sd):
    k = _pick_tensor(rng, sd, lambda k, v: v.is_floating_point() and v.numel() > 0)
    t = sd[k].clone()
    t.view(-1)[rng.randrange(t.numel())] = rng.choice([math.nan, math.inf, -math.inf])
    sd = dict(sd)
    sd[k] = t
    return sd, f"non-finite value in {k}"


def m_value(rng, sd):
    """Values a corrupt or strange run leaves: negative/zero/tiny variance, huge weights."""
    how = rng.choice(["neg-var", "zero-var", "tiny-var", "huge", "zero-all"])
    if how.endswith("var") and not any(k.endswith("running_var") for k in sd):
        how = "huge"  # a deploy checkpoint has no BatchNorm left
    if how.endswith("var"):
        k = _pick_tensor(rng, sd, lambda k, v: k.endswith("running_var"))
    else:
        k = _pick_tensor(rng, sd, lambda k, v: v.is_floating_point() and v.numel() > 0)
    t = sd[k].clone()
    i = rng.randrange(t.numel())
    if how == "neg-var":
        t.view(-1)[i] = -abs(float(t.view(-1)[i])) - 0.1
    elif how == "zero-var":
        t.view(-1)[i] = 0.0
    elif how == "tiny-var":
        t.view(-1)[i] = 1e-40
    elif how == "huge":
        t.view(-1)[i] = rng.choice([1e30, -3e38, 1e15])
    else:
        t.zero_()
    sd = dict(sd)
    sd[k] = t
    return sd, f"{how} in {k}"


VALUE_KINDS = ("neg-var", "zero-var", "tiny-var", "huge", "zero-all")


def m_nontensor(rng, sd):
    k = _pick_tensor(rng, sd)
    sd = dict(sd)
    sd[k] = rng.choice([1, "weights", [1.0, 2.0], None, {"w": torch.zeros(1)}])
    return sd, f"non-tensor value for {k}"


SD_MUTATIONS = [m_rename, m_delete, m_add, m_shape, m_dtype, m_nonfinite, m_value, m_nontensor]


def s_structure(rng, sd):
    """Containers a torch file may hold instead of the expected one (not for safetensors)."""
    how = rng.choice(["list", "tuple", "nested", "partial-prefix", "two-copies", "tensor",
                      "empty", "ema-only", "int-keys"])
    if how == "list":
        return [sd], how
    if how == "tuple":
        return (sd, {"epoch": 1}), how
    if how == "nested":
        return {"checkpoint": {"state_dict": sd}}, how
    if how == "partial-prefix":
        return {(f"module.{k}" if i % 2 else k): v for i, (k, v) in enumerate(sd.items())}, how
    if how == "two-copies":
        return {**{f"backbone.{k}": v for k, v in sd.items()},
                **{f"teacher.{k}": v for k, v in sd.items()}}, how
    if how == "tensor":
        return next(iter(sd.values())), how
    if how == "empty":
        return rng.choice([{}, {"state_dict": {}}, []]), how
    if how == "ema-only":
        return {"ema_state_dict": sd, "meta": {}}, how
    return {i: v for i, v in enumerate(sd.values())}, how


def b_flip(rng, data: bytes):
    buf = bytearray(data)
    n = rng.randint(1, 8)
    where = []
    for _ in range(n):
        zone = rng.random()
        if zone < 0.4:  # headers, the pickle, the safetensors JSON: the structure
            i = rng.randrange(min(len(buf), 4096))
        elif zone < 0.6:  # the zip central directory
            i = len(buf) - 1 - rng.randrange(min(len(buf), 1024))
        else:
            i = rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
        where.append(i)
    return bytes(buf), f"flip bits at {sorted(where)}"


def b_truncate(rng, data: bytes):
    n = rng.choice([rng.randrange(len(data)), rng.randrange(min(64, len(data))),
                    len(data) - 1 - rng.randrange(min(2048, len(data)))])
    return data[:n], f"truncate to {n} of {len(data)} bytes"


def b_zero_range(rng, data: bytes):
    i = rng.randrange(len(data))
    n = rng.randint(1, 512)
    return data[:i] + b"\0" * min(n, len(data) - i) + data[i + n:], f"zero-bytes {n} at {i}"


def b_splice(rng, data: bytes):
    i = rng.randrange(len(data))
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return data[:i] + junk + data[i:], f"insert {len(junk)} bytes at {i}"


BYTE_MUTATIONS = [b_flip, b_truncate, b_zero_range, b_splice]


# ----------------------------------------------------------------------------- the oracle

def leftovers(folder: str) -> List[str]:
    return [n for n in os.listdir(folder) if n.endswith(".tmp")]


def assert_clean_error(res, dst: str, what: str) -> None:
    assert res.exit_code == 2, f"{what}: exit {res.exit_code}\n{res.output}"
    assert "Traceback" not in res.output, f"{what}:\n{res.output}"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("error:", "Error:"))]
    assert len(errors) == 1, f"{what}: expected one error line:\n{res.stderr}"
    assert not os.path.exists(dst), f"{what}: DST left behind after an error"


def verify_output(src: str, dst: str, seed: Seed, what: str) -> None:
    """Our own check of an exit-0 result: float64 train-form model (eval) vs the deploy file."""
    src_sd = {k: v for k, v in read(src).items() if isinstance(v, torch.Tensor)}
    dst_sd = read(dst)
    arch = seed.arch
    deploy = MobileOne(arch, deploy=True).double().eval()
    deploy.load_state_dict(remap(dst_sd, arch, seed.layout, "apple", "deploy"), strict=True)
    ref_model = MobileOne(arch, deploy=(seed.form == "deploy")).double().eval()
    ref_model.load_state_dict(remap(src_sd, arch, seed.layout, "apple", seed.form), strict=True)
    x = torch.randn(2, 3, *CHECK_SIZE, generator=torch.Generator().manual_seed(5),
                    dtype=torch.float64)
    with torch.no_grad():
        ref, got = ref_model(x), deploy(x)
    assert torch.isfinite(ref).all() and torch.isfinite(got).all(), what
    scale = float(ref.abs().max())
    # Fused weights are stored rounded once to DST's dtype: allow that rounding (about 4 and 30
    # units of its precision, measured ~1e-3 and ~1e-2), and 1e-4 (convert's own) otherwise.
    low = {v.dtype for v in dst_sd.values() if v.is_floating_point()}
    rtol = max([{torch.float16: 1e-2, torch.bfloat16: 4e-2}.get(d, 1e-4) for d in low] + [1e-4])
    err = float((ref - got).abs().max())
    assert err <= rtol * scale + 1e-12, f"{what}: output differs by {err:.3g} (scale {scale:.3g})"


def run_case(run_cli, folder: str, seed: Seed, data: bytes, what: str, has_inspect: bool,
             with_verify: bool = False) -> int:
    src = os.path.join(folder, "in" + seed.suffix)
    dst = os.path.join(folder, "out" + seed.suffix)
    with open(src, "wb") as fh:
        fh.write(data)
    if os.path.exists(dst):
        os.unlink(dst)
    res = run_cli("convert", src, dst, "--json", "--input-size", "x".join(map(str, CHECK_SIZE)))
    assert res.exit_code in (0, 2), f"{what}: exit {res.exit_code}\n{res.output}"
    assert "Traceback" not in res.output, f"{what}:\n{res.output}"
    assert leftovers(folder) == [], f"{what}: temp files left: {leftovers(folder)}"
    if res.exit_code == 2:
        assert_clean_error(res, dst, what)
    else:
        assert os.path.exists(dst), what
        verify_output(src, dst, seed, what)
    if has_inspect:
        ins = run_cli("inspect", src, "--json")
        assert ins.exit_code in (0, 2), f"inspect {what}: exit {ins.exit_code}\n{ins.output}"
        assert "Traceback" not in ins.output, f"inspect {what}:\n{ins.output}"
    if with_verify and seed.form == "train":  # `verify SRC`: fused in memory, checked
        ver = run_cli("verify", src, "--input-size", "x".join(map(str, CHECK_SIZE)),
                      "--batch", "1", "--json")
        assert ver.exit_code in (0, 2), f"verify {what}: exit {ver.exit_code}\n{ver.output}"
        assert "Traceback" not in ver.output, f"verify {what}:\n{ver.output}"
        assert (ver.exit_code == 0) == (res.exit_code == 0), f"verify and convert disagree: {what}"
    return res.exit_code


def mutate(rng: random.Random, seed: Seed, sd: Dict[str, Any]) -> Tuple[bytes, str]:
    """One mutated file: a state-dict mutation saved in the seed's format, or raw byte damage."""
    if seed.fmt != "safetensors" and rng.random() < 0.1:
        obj, how = s_structure(rng, sd)
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=(seed.fmt == "zip"))
        return buf.getvalue(), f"structure {how}"
    if rng.random() < 0.5:
        new_sd, what = rng.choice(SD_MUTATIONS)(rng, sd)
        if seed.fmt == "safetensors" and not all(isinstance(v, torch.Tensor)
                                                 for v in new_sd.values()):
            new_sd, what = m_nonfinite(rng, sd)  # safetensors cannot even hold a non-tensor
        buf = io.BytesIO()
        if seed.fmt == "safetensors":
            buf.write(save({k: v.contiguous() for k, v in new_sd.items()}))
        else:
            torch.save(wrap(seed, new_sd), buf,
                       _use_new_zipfile_serialization=(seed.fmt == "zip"))
        return buf.getvalue(), what
    data = seed_bytes(seed, sd)
    out, what = rng.choice(BYTE_MUTATIONS)(rng, data)
    return out, what


def seed_bytes(seed: Seed, sd: Dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    if seed.fmt == "safetensors":
        buf.write(save({k: v.contiguous() for k, v in sd.items()}))
    else:
        torch.save(wrap(seed, sd), buf, _use_new_zipfile_serialization=(seed.fmt == "zip"))
    return buf.getvalue()


@pytest.fixture
def small_check(monkeypatch):
    """One thread for the checks on CHECK_SIZE images (tiny convolutions are slower on several
    busy threads than on one), so that each case costs milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def has_command(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"mobileone_cli.commands.{name}") is not None


@pytest.mark.parametrize("run", [pytest.param("quick", id="quick"),
                                 pytest.param("full", id="full", marks=pytest.mark.slow)])
def test_fuzz_convert(run, run_cli, tmp_path, request, small_check, record_property):
    """The quick tier tries the first QUICK_N mutations; the slow run DEFAULT_N (or --fuzz-n)."""
    n = QUICK_N if run == "quick" else fuzz_count(request.config)
    rng = random.Random(int(os.environ.get("MOBILEONE_FUZZ_SEED", "20240606")))
    base = {s: random_state_dict(s.arch, form=s.form, layout=s.layout, seed=i + 1)
            for i, s in enumerate(SEEDS)}
    has_inspect = has_command("inspect")
    has_verify = has_command("verify")
    counts = {0: 0, 2: 0}
    kinds: Dict[str, int] = {}
    # Unmutated seeds first: each must convert and verify (a fuzz whose base fails proves little).
    for seed in SEEDS:
        folder = tmp_path / seed.name
        folder.mkdir()
        code = run_case(run_cli, str(folder), seed, seed_bytes(seed, base[seed]),
                        f"{seed.name} unmutated", has_inspect)
        assert code == 0, seed.name
    for i in range(n):
        seed = SEEDS[i % len(SEEDS)]
        data, what = mutate(rng, seed, base[seed])
        code = run_case(run_cli, str(tmp_path / seed.name), seed, data,
                        f"case {i} [{seed.name}] {what}", has_inspect,
                        with_verify=has_verify and i % 3 == 0)
        counts[code] += 1
        kind = what.split(" ")[0]
        kind = "dtype" if kind == "all" else "value" if kind in VALUE_KINDS else kind
        kinds[kind] = kinds.get(kind, 0) + 1
    total = n + len(SEEDS)
    summary = (f"fuzz: tried {total} inputs ({len(SEEDS)} seeds + {n} mutations: "
               + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
               + f"): {counts[0] + len(SEEDS)} converted and verified, {counts[2]} refused "
               f"cleanly (exit 2)")
    report(request, record_property, summary, total)
    # Both outcomes must occur, or the mutations are too weak (or too strong) to test anything.
    assert counts[0] > 0 and counts[2] > 0, counts


def report(request, record_property, line: str, tried: int) -> None:
    """Say how many inputs were tried: printed (-s), a junit property, the terminal summary."""
    print("\n" + line)
    record_property("fuzz_inputs", tried)
    config = request.config
    config._mobileone_summary = getattr(config, "_mobileone_summary", []) + [line]


@pytest.mark.slow
def test_fuzz_real_variant(run_cli, tmp_path, request, small_check, record_property):
    """A few mutations of a full-size s1 checkpoint: real shapes, real key counts."""
    rng = random.Random(7)
    seed = REAL_SEED
    sd = random_state_dict(seed.arch, seed=3)
    cases = [m_nonfinite, m_value, m_shape, m_rename]
    tried = 0
    for fn in cases:
        new_sd, what = fn(rng, sd)
        buf = io.BytesIO()
        torch.save(new_sd, buf)
        run_case(run_cli, str(tmp_path), seed, buf.getvalue(), f"{seed.name} {what}", False)
        tried += 1
    data, what = b_truncate(rng, seed_bytes(seed, sd))
    run_case(run_cli, str(tmp_path), seed, data, f"{seed.name} {what}", False)
    tried += 1
    report(request, record_property, f"fuzz (s1): tried {tried} inputs", tried)
