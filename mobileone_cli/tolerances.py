"""Default tolerances of the equivalence check, torch-free so ``--help`` can show them.

Relative to max |reference output| (of the logits, and of each block's output).  Measured on
honest fp32 fusions of s0..s4 at 224x224 (random weights and random BN statistics, CPU): at most
~3e-6 at the output and ~2e-6 for any block's own error.  One block's bias moved by 0.1% of that
block's output range, or BatchNorm eps 1e-3 instead of 1e-5 (~7e-4 at the stem), land well above.
Small inputs can amplify fp32 rounding at the output (s4 at 32x32: up to ~3e-5); there a float64
referee decides (verify.REFEREE_FACTOR), never a looser default.
"""
DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 0.0
