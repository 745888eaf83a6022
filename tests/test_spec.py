"""Architectures and key layouts as data, against the reference tables typed in again."""
from __future__ import annotations

from .conftest import ARCHS, REF, expected_deploy_keys


def test_expected_key_counts_match_reference():
    assert [len(expected_deploy_keys(a)) for a in ARCHS] == [88, 88, 88, 88, 136]


def test_builtin_table_reads_the_same_as_yaml_and_matches_the_reference():
    """builtin.yaml is read with json for speed; a YAML parser must see the same table."""
    import yaml

    from mobileone_cli.arch.specs import _BUILTIN_YAML, builtin_archs

    with open(_BUILTIN_YAML, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    for name, spec in builtin_archs().items():
        assert raw[name]["widths"] == list(spec.widths)
        assert raw[name]["se_blocks"] == list(spec.se_blocks)
        assert raw[name]["conv_branches"] == list(spec.conv_branches)
        stem, widths, se, _ = REF[name]
        assert (spec.stem_channels, spec.widths, any(spec.se_blocks)) == (stem, widths, se)
