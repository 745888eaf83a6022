"""non_finite_keys finds every NaN/Inf, whatever the dtype mix (it batches tensors by dtype)."""
from __future__ import annotations

import torch

from mobileone_cli.io.sanity import non_finite_keys


def test_non_finite_keys_across_dtypes_and_positions():
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i, dtype in enumerate([torch.float32, torch.float16, torch.bfloat16, torch.float64] * 3):
        sd[f"t{i}"] = torch.randn(3, 5, generator=g).to(dtype)
    sd["empty"] = torch.zeros(0)
    sd["ints"] = torch.arange(4)
    sd["scalar"] = torch.tensor(2.0)
    sd["t1"][2, 4] = float("nan")
    sd["t6"][0, 0] = float("inf")
    sd["t11"][1, 3] = -float("inf")
    sd["scalar"] = torch.tensor(float("nan"))
    keys = list(sd)
    expected = [k for k in keys if sd[k].is_floating_point() and sd[k].numel()
                and not all(torch.isfinite(sd[k]).reshape(-1).tolist())]
    assert expected == ["t1", "t6", "t11", "scalar"]
    assert non_finite_keys(sd, keys) == expected
    assert non_finite_keys(sd, ["t0", "ints", "empty", "missing"]) == []
