"""Each rule is written once: the tolerance texts come from the constants, and the BatchNorm eps
of ``--bn-eps``, the library and a config obey one validation."""
from __future__ import annotations

import pytest

from mobileone_cli.arch.config import parse_config
from mobileone_cli.errors import BadInput
from mobileone_cli.rules import tolerances
from mobileone_cli.rules.limits import DEFAULT_EPS, check_bn_eps


def test_rule_texts_follow_the_constants(monkeypatch):
    assert tolerances.checkpoint_rule_text() == "1e-4 plus 4x"
    assert tolerances.export_rule_text() == "1e-3 plus 4x"
    monkeypatch.setattr(tolerances, "DEFAULT_RTOL", 2.5e-5)
    monkeypatch.setattr(tolerances, "SENSITIVITY_FACTOR", 8.0)
    assert tolerances.checkpoint_rule_text() == "2.5e-5 plus 8x"
    monkeypatch.setattr(tolerances, "EXPORT_RTOL", {"fp32": 1e-3, "fp16": 0.02})
    assert tolerances.export_rule_text() == "0.02 (fp16) or 1e-3 (fp32) plus 4x"


@pytest.mark.parametrize("command, text", [("verify", tolerances.checkpoint_rule_text()),
                                           ("convert", tolerances.checkpoint_rule_text()),
                                           ("export", tolerances.export_rule_text())])
def test_help_states_the_rule_the_check_uses(command, text):
    from click.testing import CliRunner

    from mobileone_cli.cli import cli

    res = CliRunner().invoke(cli, [command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert text in " ".join(res.output.split())


@pytest.mark.parametrize("eps", [0, 0.0, 1e-3, 1, DEFAULT_EPS])
def test_config_eps_and_bn_eps_accept_the_same_values(eps):
    spec = parse_config({"model": {"backbone": {"arch": "s0", "norm_cfg": {"eps": eps}}}})
    assert spec.bn_eps == check_bn_eps(eps) == float(eps)


@pytest.mark.parametrize("eps", [-1e-5, 1.5, float("nan"), float("inf"), True, "1e-5"])
def test_config_eps_and_bn_eps_refuse_the_same_values(eps):
    with pytest.raises(BadInput, match="norm_cfg.eps"):
        parse_config({"model": {"backbone": {"arch": "s0", "norm_cfg": {"eps": eps}}}})
    if not isinstance(eps, str):  # --bn-eps arrives as a number (click converts the text)
        with pytest.raises(BadInput, match="--bn-eps"):
            check_bn_eps(eps)
