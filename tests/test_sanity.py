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


def test_huge_finite_tensors_are_not_taken_for_inf():
    """The fused norm that screens for NaN/Inf overflows on huge finite values (3e38 in fp32,
    60000 in fp16); those tensors must be settled exactly, not reported."""
    import torch

    from mobileone_cli.io.sanity import non_finite_keys

    sd = {"ok": torch.ones(10), "huge32": torch.full((4,), 3e38),
          "huge16": torch.full((3,), 60000.0).half(), "nan": torch.tensor([1.0, float("nan")]),
          "inf16": torch.tensor([float("inf")]).half(), "ints": torch.arange(3)}
    assert non_finite_keys(sd, list(sd)) == ["nan", "inf16"]
