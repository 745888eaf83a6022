"""Every tolerance of the tool, in one place (torch-free, so ``--help`` can show them).

Checkpoint checks (convert, verify) use one rule, :func:`mobileone_cli.check.verdict.judge`:
a deploy model passes when it is within ``DEFAULT_RTOL`` of max |train output| plus
``SENSITIVITY_FACTOR`` times what perturbing its own weights by one unit roundoff of their dtype
changes, at the output and in every block.  So the tolerance follows the checked file's dtype
and the network's conditioning, both measured; docs/verify.md gives the measured levels.
"""
DEFAULT_RTOL = 1e-4  # relative to max |train output| (logits, and each block's output)
DEFAULT_ATOL = 0.0
# How many times the measured rounding sensitivity a deploy model may differ by.  The
# perturbation is one full unit roundoff with random sign, about 1.7x the RMS of real rounding.
SENSITIVITY_FACTOR = 4.0
# Unit roundoff (half the distance from 1 to the next number) of each storage dtype.
UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "float16": 2.0 ** -11,
                 "bfloat16": 2.0 ** -8}
# An exported artifact executed in its runtime against our deploy model holding the artifact's
# weights, in float64 (check/artifact.py).  Bound, relative to max |output|:
#     EXPORT_RTOL[dtype] + EXPORT_SENSITIVITY_FACTOR x (effect of the artifact's arithmetic on
#     our model: PyTorch's own fp32 pass for fp32, every module output rounded for fp16)
# Measured levels (docs/export.md has the table), s0 and s4 at 64x64, calibrated and random
# statistics, on an x86-64 CPU:
#   fp32, every runtime: 4e-7..2e-4, i.e. 0.7..2.2x PyTorch's own fp32 error on the network.
#   fp16 ExecuTorch (fp16 arithmetic): 9e-4 (random statistics) .. 5e-1 (s4 calibrated), i.e.
#   0.8..2.7x the emulated fp16 effect; onnxruntime fp16 2e-4..4e-4 (0.2..0.6x); LiteRT fp16
#   (fp16 weights, fp32 arithmetic) 1e-6..1e-5.  A graph that drops SE, pads wrongly or changes
#   one block's bias by 1% lands at 1e-2 and above on a well-conditioned network.
EXPORT_RTOL = {"fp32": 1e-3, "fp16": 1e-3}
EXPORT_SENSITIVITY_FACTOR = 4.0

# Checkpoint health (``mobileone inspect``).  The eps sensitivity of a train-form file is the
# relative change max|K(b) - K(a)| / max|K(a)| of each block's fused kernel between these two
# BatchNorm eps values (PyTorch's default and the value TensorFlow ports use); above the warning
# level, the eps the model was trained with (not stored in checkpoints) decides the fused weights.
# A channel with running_var v moves by about (b - a) / (2 v): the warning fires below v ~ 0.5.
EPS_PROBE = (1e-5, 1e-3)  # the first is limits.DEFAULT_EPS
EPS_SENSITIVITY_WARN = 1e-3
# The half-precision storage formats, as round-to-nearest-even rounds into them: the largest
# finite value; |x| at or above ``overflow`` (max + half an ulp) becomes inf; below ``normal``
# minus half the smallest subnormal it becomes subnormal (or zero); at or below half the
# smallest subnormal it becomes zero.
FORMAT_RANGE = {
    "float16": {"max": 65504.0, "overflow": 65520.0, "normal": 2.0 ** -14,
                "subnormal": 2.0 ** -24},
    "bfloat16": {"max": (2 - 2.0 ** -7) * 2.0 ** 127, "overflow": 2.0 ** 128 - 2.0 ** 119,
                 "normal": 2.0 ** -126, "subnormal": 2.0 ** -133},
}
# Share of the nonzero values that would round to zero in a format, above which health warns.
FLUSH_WARN_SHARE = 1e-3

# int8 quantization (``mobileone quant``): a block whose own SQNR (only it quantized) is this
# many dB below the median block's carries 10x the typical block's quantization noise or more,
# and is flagged as dominating the int8 error.
QUANT_FLAG_DB = 10.0


def short_number(x: float) -> str:
    """``x`` as the help texts write it: 1e-4, 0.5, 4 (never 1e-04 or 0.0001)."""
    if x == 0 or abs(x) >= 1e-2:
        return f"{x:g}"
    mantissa, exponent = f"{x:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def checkpoint_rule_text() -> str:
    """The default bound of a checkpoint check in words ("1e-4 plus 4x"), made from the
    constants so --help, the reports and the check itself cannot drift apart."""
    return f"{short_number(DEFAULT_RTOL)} plus {short_number(SENSITIVITY_FACTOR)}x"


def export_rule_text() -> str:
    """The default bound of an exported artifact's check in words ("1e-3 plus 4x")."""
    rtols = sorted(set(EXPORT_RTOL.values()))
    base = (short_number(rtols[0]) if len(rtols) == 1 else
            " or ".join(f"{short_number(v)} ({k})" for k, v in sorted(EXPORT_RTOL.items())))
    return f"{base} plus {short_number(EXPORT_SENSITIVITY_FACTOR)}x"
