"""Equivalence of a train-form and a deploy-form MobileOne, measured on real forward passes.

Both models are always built from state dicts with strict loading and run in eval mode (running
statistics), which is the only mode in which fusion is an identity.  Metrics are relative to the
scale of the reference output so that one tolerance fits every variant.

:func:`check_equivalence` is the quick final-output check ``convert`` runs; :func:`verify_state_dicts`
and :func:`verify_files` (``mobileone verify``) add a float64 reference run and locate the first
block where the two models part (:mod:`.localize`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from .arch import ArchSpec
from .errors import BadInput
from .layouts import remap
from .sanity import check_fused_finite
from .tolerances import DEFAULT_ATOL, DEFAULT_RTOL

__all__ = ["Metrics", "compare_outputs", "load_model", "check_equivalence", "seeded_inputs",
           "DEFAULT_RTOL", "DEFAULT_ATOL", "Side", "VerifyReport", "read_side", "pair_sides",
           "verify_state_dicts", "verify_files", "resolve_device", "parse_input_size",
           "strict_fp32", "rounding_explains", "REFEREE_FACTOR"]

# When the output differs by more than rtol but no block is wrong on its own, a float64 run of
# the train model referees: the deploy model passes if it is no further from the exact answer than
# rtol plus this many times the train model's OWN fp32 rounding error.  Measured ratio of the two
# on honest fusions: 0.7 to 1.6 (s1, s4; 16 and 32 px; 4 seeds).
REFEREE_FACTOR = 4.0
MAX_INPUT_SIDE = 4096
MAX_BATCH = 1024
CHUNK = 4  # images per forward pass while block outputs are kept (bounds memory)


@dataclass
class Metrics:
    """How far ``out`` is from ``ref``; relative numbers are relative to max |ref|."""

    max_abs: float
    max_rel: float
    scale: float  # max |ref|
    cosine: float
    top1: Optional[float] = None  # fraction of rows whose argmax agrees (logits only)
    top5: Optional[float] = None  # fraction of rows whose top-5 sets agree
    finite: bool = True

    def within(self, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> bool:
        return self.finite and self.max_abs <= atol + rtol * self.scale

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def compare_outputs(ref: torch.Tensor, out: torch.Tensor, logits: bool = True) -> Metrics:
    """Metrics of ``out`` against ``ref``, computed in float64."""
    r = ref.detach().to(torch.float64).reshape(ref.shape[0], -1)
    o = out.detach().to(torch.float64).reshape(out.shape[0], -1)
    finite = bool(torch.isfinite(o).all() and torch.isfinite(r).all())
    diff = (r - o).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    scale = float(r.abs().max()) if r.numel() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    cos = torch.nn.functional.cosine_similarity(r, o, dim=1)
    m = Metrics(max_abs=max_abs, max_rel=max_rel, scale=scale, cosine=float(cos.min()),
                finite=finite)
    if logits and r.shape[1] > 1:
        m.top1 = float((r.argmax(1) == o.argmax(1)).to(torch.float64).mean())
        k = min(5, r.shape[1])
        tr = r.topk(k, dim=1).indices.sort(dim=1).values
        to = o.topk(k, dim=1).indices.sort(dim=1).values
        m.top5 = float((tr == to).all(dim=1).to(torch.float64).mean())
    if not finite:
        m.max_abs = m.max_rel = math.inf
    return m


def load_model(state_dict: Mapping[str, torch.Tensor], arch: ArchSpec, form: str, *,
               layout: str = "apple", bn_eps: Optional[float] = None,
               device: str = "cpu", dtype: Optional[torch.dtype] = None):
    """Our MobileOne in eval mode holding ``state_dict`` (strict; shares memory when it can)."""
    from .model import MobileOne

    apple_sd = remap(state_dict, arch, layout, "apple", form)
    with torch.device("meta"):  # no allocation, no random init: every tensor is assigned below
        model = MobileOne(arch, deploy=(form == "deploy"), bn_eps=bn_eps)
    first = next(iter(apple_sd.values()))
    target = dtype or first.dtype
    apple_sd = {k: (v.to(device=device, dtype=target) if v.is_floating_point() else v.to(device))
                for k, v in apple_sd.items()}
    model.load_state_dict(apple_sd, strict=True, assign=True)
    return model.eval()


def seeded_inputs(seed: int = 0, batch: int = 1, input_size: Sequence[int] = (224, 224),
                  channels: int = 3, dtype: torch.dtype = torch.float32,
                  device: str = "cpu") -> torch.Tensor:
    """Standard-normal images from a private generator: same seed, same images, everywhere."""
    g = torch.Generator().manual_seed(seed)
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    return torch.randn(batch, channels, h, w, generator=g, dtype=torch.float64).to(
        device=device, dtype=dtype)


@torch.no_grad()
def check_equivalence(train_sd: Mapping[str, torch.Tensor], deploy_sd: Mapping[str, torch.Tensor],
                      arch: ArchSpec, *, layout: str = "apple", deploy_layout: Optional[str] = None,
                      bn_eps: Optional[float] = None, seed: int = 0, batch: int = 1,
                      input_size: Tuple[int, int] = (224, 224), device: str = "cpu",
                      images: Optional[torch.Tensor] = None) -> Metrics:
    """Run both forms on the same seeded images in eval mode and compare their outputs."""
    train = load_model(train_sd, arch, "train", layout=layout, bn_eps=bn_eps, device=device)
    deploy = load_model(deploy_sd, arch, "deploy", layout=deploy_layout or layout,
                        device=device, dtype=next(iter(train.parameters())).dtype)
    dtype = next(iter(train.parameters())).dtype
    x = images.to(device=device, dtype=dtype) if images is not None else seeded_inputs(
        seed, batch, input_size, arch.in_channels, dtype, device)
    with strict_fp32(device):
        ref = train(x)
        out = deploy(x)
    return compare_outputs(ref, out, logits=arch.has_head)


@contextlib.contextmanager
def strict_fp32(device: Any = "cpu") -> Iterator[None]:
    """Full fp32 convolutions and matmuls on CUDA for the duration of a check.

    Ampere+ GPUs run fp32 convolutions in TF32 by default (10-bit mantissa): ~1e-3 of rounding
    that would both fail honest fusions and hide real errors.  Settings are restored after.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        targets = [(conv, "fp32_precision", "ieee"),
                   (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    else:
        targets = [(torch.backends.cudnn, "allow_tf32", False),
                   (torch.backends.cuda.matmul, "allow_tf32", False)]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
    try:
        for obj, name, value in targets:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def resolve_device(name: str) -> str:
    """``--device`` -> a usable torch device string, or a clear error."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise BadInput(f"--device {name!r}: not a device name (use cpu or cuda)") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise BadInput(f"--device {name!r}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        built = f"with CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
        raise BadInput(f"--device {name}: CUDA is not available (this torch {torch.__version__} "
                       f"is built {built})", hint="use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise BadInput(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return str(dev)


def parse_input_size(value: Any) -> Tuple[int, int]:
    """'224', '224x192', '224,192', '224 192', 224 or (224, 192) -> (H, W), checked."""
    if isinstance(value, int):
        parts: Sequence[Any] = [value]
    elif isinstance(value, str):
        parts = value.replace("x", " ").replace("X", " ").replace(",", " ").split()
    else:
        parts = list(value)
    try:
        nums = [int(p) for p in parts]
    except (TypeError, ValueError):
        nums = []
    if len(nums) not in (1, 2):
        raise BadInput(f"--input-size {value!r}: give one size or H and W, e.g. 224 or 224x192")
    h, w = (nums[0], nums[0]) if len(nums) == 1 else (nums[0], nums[1])
    if not (1 <= h <= MAX_INPUT_SIDE and 1 <= w <= MAX_INPUT_SIDE):
        raise BadInput(f"--input-size {h}x{w}: each side must be between 1 and {MAX_INPUT_SIDE}")
    return h, w


@dataclass
class Side:
    """One checkpoint of a comparison: the MobileOne's tensors and what detection found."""

    path: Optional[str]  # None: fused in memory
    layout: str
    form: str
    arch: ArchSpec
    prefix: str = ""
    dtype: str = "float32"
    state_dict: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    source: str = "file"  # 'file' or 'fused in memory'
    notes: List[str] = field(default_factory=list)  # how the file was read

    def describe(self) -> Dict[str, object]:
        return {"path": self.path, "source": self.source, "layout": self.layout,
                "form": self.form, "arch": self.arch.name, "num_classes": self.arch.num_classes,
                "prefix": self.prefix, "dtype": self.dtype}


def read_side(path: str, *, ema: bool = False, trust: bool = False) -> Side:
    """Load ``path`` safely, detect its MobileOne and keep only that MobileOne's tensors."""
    from .checkpoint import load_checkpoint
    from .detect import detect_layout, tensor_info

    ck = load_checkpoint(path, ema=ema, trust=trust)
    det = detect_layout(tensor_info(ck.state_dict), where=path)
    sd = {e.key: ck.state_dict[det.full_key(e.key)] for e in det.entries()}
    notes = []
    if getattr(ck, "stubbed", None):
        notes.append(f"{path}: {len(ck.stubbed)} foreign global(s) read as inert placeholders")
    if getattr(ck, "trusted", False):
        notes.append(f"{path}: unpickled with weights_only=False (--trust-file)")
    return Side(path=path, layout=det.layout, form=det.form, arch=det.arch, prefix=det.prefix,
                dtype=det.dtype, state_dict=sd, notes=notes)


def pair_sides(train: Side, deploy: Side) -> None:
    """Refuse a pair that cannot be compared, saying what is wrong, before any number."""
    tp, dp = train.path or "TRAIN_CKPT", deploy.path or "DEPLOY_CKPT"
    if train.form == "deploy" and deploy.form == "train":
        raise BadInput(f"the files are swapped: {tp} is deploy-form and {dp} is train-form",
                       hint=f"mobileone verify {dp} {tp}")
    if train.form != "train":
        raise BadInput(f"{tp} is a deploy-form checkpoint; the first file must be the train "
                       f"(unfused) checkpoint")
    if deploy.form != "deploy":
        raise BadInput(f"{dp} is a train-form checkpoint; the second file must be the deploy "
                       f"(fused) checkpoint",
                       hint=f"to check the fusion of one train checkpoint: mobileone verify {tp}")
    if not train.arch.same_backbone(deploy.arch, ignore_branches=True):
        raise BadInput(f"architecture mismatch: {tp} is MobileOne {train.arch.name} but {dp} is "
                       f"MobileOne {deploy.arch.name}")
    if train.arch.num_classes != deploy.arch.num_classes:
        def classes(a: ArchSpec) -> str:
            return f"{a.num_classes} classes" if a.num_classes else "no head"
        raise BadInput(f"head mismatch: {tp} has {classes(train.arch)} but {dp} has "
                       f"{classes(deploy.arch)}")


@dataclass
class VerifyReport:
    """Everything ``mobileone verify`` found; ``passed`` is the verdict."""

    arch: ArchSpec
    rtol: float
    atol: float
    compared: str  # 'logits' or 'feature map'
    output: Metrics  # deploy (fp32) against train (fp32)
    blocks: List[Any]  # localize.BlockError, in forward order
    stages: List[Any]  # localize.StageError, stem first
    first_bad: Optional[Any] = None  # localize.BlockError: first block wrong on its own
    first_divergent: Optional[Any] = None  # localize.BlockError: first above tolerance end to end
    train_vs_fp64: Optional[Metrics] = None  # train fp32 against train fp64
    deploy_vs_fp64: Optional[Metrics] = None  # deploy fp32 against train fp64
    train: Dict[str, object] = field(default_factory=dict)
    deploy: Dict[str, object] = field(default_factory=dict)
    inputs: Dict[str, object] = field(default_factory=dict)
    device: str = "cpu"
    notes: List[str] = field(default_factory=list)
    rounding_explained: bool = False  # output beyond rtol, but the fp64 referee says: rounding

    @property
    def output_within(self) -> bool:
        return self.output.within(self.rtol, self.atol)

    @property
    def passed(self) -> bool:
        return (self.output_within or self.rounding_explained) and self.first_bad is None

    def summary(self) -> str:
        """One line: the verdict and the number behind it."""
        tol = f"rtol {self.rtol:g}" + (f", atol {self.atol:g}" if self.atol else "")
        if self.passed and self.rounding_explained:
            return (f"equivalent up to fp32 rounding: max rel diff of the {self.compared} "
                    f"{self.output.max_rel:.2e} exceeds {tol}, but every block is within it and "
                    f"the train model's own fp32 error is of the same size (fp64 referee)")
        if self.passed:
            return (f"equivalent: max rel diff of the {self.compared} {self.output.max_rel:.2e} "
                    f"is within {tol}")
        where = ""
        if self.first_bad is not None:
            b = self.first_bad
            where = (f"; first block that breaks: {b.name} (its own rel diff {b.own_rel:.2e}, "
                     f"end to end {b.max_rel:.2e})")
        elif self.first_divergent is not None:
            where = (f"; no block is wrong on its own, the difference builds up from "
                     f"{self.first_divergent.name} on")
        return (f"NOT equivalent: max rel diff of the {self.compared} {self.output.max_rel:.2e} "
                f"({tol}){where}")

    def to_dict(self) -> Dict[str, object]:
        """Plain data for ``--json``; inf/NaN become null (strict JSON), ``finite`` says why."""
        return _finite_json(self._as_dict())

    def _as_dict(self) -> Dict[str, object]:
        return {
            "passed": self.passed, "summary": self.summary(), "rtol": self.rtol,
            "rounding_explained": self.rounding_explained,
            "atol": self.atol, "arch": self.arch.name, "num_classes": self.arch.num_classes,
            "train": self.train, "deploy": self.deploy, "inputs": self.inputs,
            "device": self.device, "compared": self.compared,
            "output": {
                "deploy_vs_train": self.output.to_dict(),
                "train_fp32_vs_fp64": self.train_vs_fp64.to_dict() if self.train_vs_fp64 else None,
                "deploy_fp32_vs_fp64": (self.deploy_vs_fp64.to_dict()
                                        if self.deploy_vs_fp64 else None),
            },
            "first_bad_block": self.first_bad.to_dict() if self.first_bad is not None else None,
            "first_divergent_block": (self.first_divergent.to_dict()
                                      if self.first_divergent is not None else None),
            "stages": [s.to_dict() for s in self.stages],
            "blocks": [b.to_dict() for b in self.blocks],
            "notes": list(self.notes),
        }


def rounding_explains(train_vs_fp64: Metrics, deploy_vs_fp64: Metrics, rtol: float,
                      atol: float = DEFAULT_ATOL) -> bool:
    """True when the deploy model is within rtol of the exact (fp64) answer, give or take a few
    times the train model's own fp32 rounding error: their difference is rounding, not fusion."""
    if not (train_vs_fp64.finite and deploy_vs_fp64.finite):
        return False
    bound = atol + rtol * deploy_vs_fp64.scale + REFEREE_FACTOR * train_vs_fp64.max_abs
    return deploy_vs_fp64.max_abs <= bound


def _finite_json(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    return obj


def _run_chunks(model, x: torch.Tensor, device: str, dtype: torch.dtype,
                chunk: int) -> torch.Tensor:
    outs = [model(x[i:i + chunk].to(device=device, dtype=dtype)).cpu()
            for i in range(0, x.shape[0], chunk)]
    return torch.cat(outs)


@torch.no_grad()
def verify_state_dicts(train_sd: Mapping[str, torch.Tensor],
                       deploy_sd: Mapping[str, torch.Tensor], arch: ArchSpec, *,
                       layout: str = "apple", deploy_layout: Optional[str] = None,
                       bn_eps: Optional[float] = None, seed: int = 0, batch: int = 1,
                       input_size: Tuple[int, int] = (224, 224),
                       images: Optional[torch.Tensor] = None, device: str = "cpu",
                       rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                       reference: Optional[str] = None, chunk: int = CHUNK) -> VerifyReport:
    """Compare a train and a deploy state dict of ``arch`` block by block and at the output.

    Both models run in fp32 and eval mode; ``reference='fp64'`` adds a float64 run of the train
    model so fusion error can be told apart from fp32 rounding.  ``images`` (N, C, H, W) replaces
    the seeded random inputs.
    """
    from .localize import BlockTracker, first_bad_block, first_divergent, stage_table

    if reference not in (None, "fp64"):
        raise BadInput(f"--reference {reference!r}: only fp64 is supported")
    if rtol < 0 or atol < 0 or not (math.isfinite(rtol) and math.isfinite(atol)):
        raise BadInput(f"tolerances must be finite and >= 0 (rtol {rtol:g}, atol {atol:g})")
    if images is None:
        if not 1 <= batch <= MAX_BATCH:
            raise BadInput(f"--batch {batch}: must be between 1 and {MAX_BATCH}")
        x = seeded_inputs(seed, batch, parse_input_size(input_size), arch.in_channels)
    else:
        x = images.to(torch.float32)
        if x.ndim != 4 or x.shape[1] != arch.in_channels:
            raise BadInput(f"the images have shape {list(x.shape)}, but this MobileOne takes "
                           f"{arch.in_channels}-channel input")
    deploy_layout = deploy_layout or layout
    train = load_model(train_sd, arch, "train", layout=layout, bn_eps=bn_eps, device=device,
                       dtype=torch.float32).eval()
    deploy = load_model(deploy_sd, arch, "deploy", layout=deploy_layout, device=device,
                        dtype=torch.float32).eval()
    tracker = BlockTracker(train, deploy)
    refs, outs = [], []
    # Every block's output is held for one chunk: fewer images per chunk for large inputs.
    chunk = max(1, min(chunk, chunk * 224 * 224 // (x.shape[2] * x.shape[3])))
    with strict_fp32(device):
        for i in range(0, x.shape[0], chunk):
            r, o = tracker.run(x[i:i + chunk].to(device))
            refs.append(r.cpu())
            outs.append(o.cpu())
        ref, out = torch.cat(refs), torch.cat(outs)
        output = compare_outputs(ref, out, logits=arch.has_head)
        blocks = tracker.results()
        bad = first_bad_block(blocks, rtol, atol)
        referee = (bad is None and output.finite and not output.within(rtol, atol))
        train64 = deploy_vs = None
        if reference == "fp64" or referee:
            model64 = load_model(train_sd, arch, "train", layout=layout, bn_eps=bn_eps,
                                 device=device, dtype=torch.float64).eval()
            ref64 = _run_chunks(model64, x, device, torch.float64, chunk)
            del model64
            train64 = compare_outputs(ref64, ref, logits=arch.has_head)
            deploy_vs = compare_outputs(ref64, out, logits=arch.has_head)
    report = VerifyReport(
        arch=arch, rtol=rtol, atol=atol,
        compared="logits" if arch.has_head else "feature map",
        output=output, blocks=blocks, stages=stage_table(blocks, rtol, atol), first_bad=bad,
        first_divergent=first_divergent(blocks, rtol, atol),
        train_vs_fp64=train64, deploy_vs_fp64=deploy_vs, device=str(device),
        inputs={"kind": "images" if images is not None else "random", "seed": seed,
                "shape": list(x.shape)})
    if referee:
        report.rounding_explained = rounding_explains(train64, deploy_vs, rtol, atol)
        if reference is None:
            report.notes.append("the output is beyond rtol while every block is within it, so "
                                "a float64 run of the train model was added as referee")
    return report


def verify_files(train_path: str, deploy_path: Optional[str] = None, *,
                 arch: Optional[ArchSpec] = None, arch_source: Optional[str] = None,
                 bn_eps: Optional[float] = None, seed: int = 0, batch: int = 1,
                 input_size: Any = (224, 224), images_dir: Optional[str] = None,
                 device: str = "cpu", rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                 reference: Optional[str] = None, ema: bool = False,
                 trust: bool = False) -> VerifyReport:
    """``mobileone verify``: a train file against a deploy file, or against its own fusion."""
    from .convert import check_finite
    from .fusion import DEFAULT_EPS, fuse_state_dict

    size = parse_input_size(input_size)
    device = resolve_device(device)
    images = names = None
    if images_dir is not None:
        from .images import load_images

        images, names = load_images(images_dir, size)
    train = read_side(train_path, ema=ema, trust=trust)
    if arch is not None:  # --config: the file must hold the configured network
        from .config import expect_arch

        train.arch = expect_arch(arch, train.arch, train.form, where=train_path,
                                 source=arch_source or "--arch", compare_head=True)
    eps = DEFAULT_EPS if bn_eps is None else bn_eps
    if deploy_path is None:
        if train.form != "train":
            raise BadInput(f"{train_path} is already deploy-form: there is nothing to fuse",
                           hint=f"compare it with its train checkpoint: "
                                f"mobileone verify TRAIN_CKPT {train_path}")
        check_finite(train.state_dict, list(train.state_dict), train_path)
        # A half-precision file is fused to float32: rounding the fused weights back to half
        # would be reported as a mismatch (~4e-4) although the fusion is exact.
        half = any(d in train.dtype for d in ("float16", "bfloat16"))
        fused = fuse_state_dict(dict(train.state_dict), train.arch, eps=eps, layout=train.layout,
                                dtype=torch.float32 if half else None)
        check_fused_finite(fused, list(fused), train_path)  # overflow is bad input, as in convert
        deploy = Side(path=None, layout=train.layout, form="deploy", arch=train.arch,
                      dtype="float32" if half else train.dtype, state_dict=fused,
                      source=f"fused in memory (eps {eps:g})")
    else:
        deploy = read_side(deploy_path, ema=ema, trust=trust)
        if arch is not None:
            deploy.arch = expect_arch(arch, deploy.arch, deploy.form, where=deploy_path,
                                      source=arch_source or "--arch", compare_head=True)
        pair_sides(train, deploy)
        check_finite(train.state_dict, list(train.state_dict), train_path)
    report = verify_state_dicts(
        train.state_dict, deploy.state_dict, train.arch, layout=train.layout,
        deploy_layout=deploy.layout, bn_eps=eps, seed=seed, batch=batch, input_size=size,
        images=images, device=device, rtol=rtol, atol=atol, reference=reference)
    if not math.isfinite(report.output.scale):  # as in convert: nothing to compare against
        raise BadInput(f"{train_path}: the train model itself outputs NaN/Inf on the check "
                       f"inputs (weights too large?)", hint="a diverged training run or a "
                                                            "corrupt file?")
    report.train = train.describe()
    report.deploy = deploy.describe()
    report.notes.extend(train.notes + deploy.notes)
    if names is not None:
        report.inputs = {"kind": "images", "dir": images_dir, "files": len(names),
                         "shape": report.inputs["shape"],
                         "preprocessing": "resize short edge (bilinear), centre crop, "
                                          "ImageNet mean/std"}
    else:
        report.inputs = {"kind": "random", "seed": seed, "shape": report.inputs["shape"]}
    half = any(d in deploy.dtype for d in ("float16", "bfloat16"))
    if half:
        report.notes.append(f"{deploy_path} holds {deploy.dtype} weights: their rounding alone "
                            f"is ~1e-3 relative; check them with --rtol 1e-2")
    if deploy_path is not None and not half and not report.passed \
            and report.first_bad is not None and report.first_bad.stage == 0 \
            and _all_blocks_own_bad(report):
        report.notes.append("most blocks differ on their own: a wrong --bn-eps, or a deploy "
                            "file made from another checkpoint?")
    return report


def _all_blocks_own_bad(report: VerifyReport) -> bool:
    """Most blocks are wrong on their own: the files disagree everywhere, not in one block."""
    blocks = [b for b in report.blocks if b.stage <= report.arch.num_stages]
    return sum(not b.own_within(report.rtol, report.atol) for b in blocks) >= 0.5 * len(blocks)
