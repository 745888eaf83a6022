"""models/synthetic.py: calibrated statistics are what forward passes measure, the same tensors
for a seed whatever the thread count, activations O(1) through every stage."""

import torch
import torch.nn.functional as F

from mobileone_cli.arch.specs import get_arch
from mobileone_cli.models import synthetic
from mobileone_cli.models.mobileone import build_model
from mobileone_cli.models.synthetic import random_state_dict


def test_calibrated_stem_statistics_are_those_of_the_calibration_images():
    arch = get_arch("s0")
    sd = random_state_dict(arch, seed=5, dtype=torch.float64)
    # Independently: the same draws, the stem's first conv branch in float64, its batch moments.
    g = torch.Generator().manual_seed(5)
    raw = synthetic._raw_train(arch, g)
    size = max(synthetic.CALIBRATION_SIZE, 2 ** (arch.num_stages + 1))
    x = torch.randn(synthetic.CALIBRATION_IMAGES, arch.in_channels, size, size, generator=g)
    y = F.conv2d(x.double(), raw["stage0.rbr_conv.0.conv.weight"], stride=2, padding=1)
    mean = y.mean(dim=(0, 2, 3))
    var = y.var(dim=(0, 2, 3), unbiased=True)
    got_mean = sd["stage0.rbr_conv.0.bn.running_mean"]
    got_var = sd["stage0.rbr_conv.0.bn.running_var"]
    assert torch.allclose(got_mean, mean, rtol=1e-4, atol=1e-5 * float(var.sqrt().max()))
    assert torch.allclose(got_var, var, rtol=1e-4)
    # And not the random draws they replace.
    assert not torch.allclose(got_var, raw["stage0.rbr_conv.0.bn.running_var"], rtol=1e-2)


def test_same_seed_same_tensors_whatever_the_thread_count():
    arch = get_arch("s0")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = random_state_dict(arch, seed=3)
        assert torch.get_num_threads() == 2  # the caller's setting is given back
        torch.set_num_threads(1)
        b = random_state_dict(arch, seed=3)
    finally:
        torch.set_num_threads(before)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = random_state_dict(arch, seed=4)
    assert not torch.equal(a["stage0.rbr_conv.0.bn.running_var"],
                           c["stage0.rbr_conv.0.bn.running_var"])


def _stage_stds(arch, stats):
    model = build_model(arch, "train")
    model.load_state_dict(random_state_dict(arch, seed=0, stats=stats))
    model.eval()
    stds = []
    hooks = [getattr(model, f"stage{i}").register_forward_hook(
        lambda m, i, o: stds.append(float(o.std()))) for i in range(arch.num_stages + 1)]
    x = torch.randn(4, arch.in_channels, 64, 64, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return stds


def test_calibrated_activations_stay_order_one():
    arch = get_arch("s1")
    calibrated = _stage_stds(arch, "calibrated")
    assert all(0.3 < s < 4 for s in calibrated), calibrated
    ill = _stage_stds(arch, "random")
    assert max(ill) > 5 * max(calibrated), (ill, calibrated)  # the stress case is not O(1)
