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
