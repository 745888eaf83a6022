"""Every tolerance of the tool, in one place (torch-free, so ``--help`` can show them).

Checkpoint checks (convert, verify) use one rule, :func:`mobileone_cli.check.harness.judge`:
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
# An exported graph against our PyTorch model holding the same weights, relative to max |output|.
# onnxruntime, measured on synthetic s0/s4 at 64x64..224x224: fp32 4e-7..9e-5 (the top from an s4
# whose statistics amplify any rounding: PyTorch's own float32 is 5e-5 off float64 there); fp16 on
# the CPU provider 2e-4..4e-4.  A graph that drops SE, pads wrongly or changes one block's bias by
# 1% lands at 1e-2 and above.
EXPORT_RTOL = {"fp32": 1e-3, "fp16": 1e-2}

# Checkpoint health (``mobileone inspect``).  The eps sensitivity of a train-form file is the
# relative change max|K(b) - K(a)| / max|K(a)| of each block's fused kernel between these two
# BatchNorm eps values (PyTorch's default and the value TensorFlow ports use); above the warning
# level, the eps the model was trained with (not stored in checkpoints) decides the fused weights.
# A channel with running_var v moves by about (b - a) / (2 v): the warning fires below v ~ 0.5.
EPS_PROBE = (1e-5, 1e-3)
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
