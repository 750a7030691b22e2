"""One KEY=VALUE reader for --param and for compare's method specs."""

import pytest
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.evaluation.compare import CompareError, parse_method_spec
from naturelens.methods.params import ParamError, parse_param, parse_params


def test_values_are_yaml_scalars_and_keys_use_underscores():
    assert parse_params(["batch-size=8", "lr=1e-3", "flag=true", "k=[1, 2]", "s=a:b"]) == {
        "batch_size": 8,
        "lr": 1e-3,
        "flag": True,
        "k": [1, 2],
        "s": "a:b",
    }
    for bad in ["novalue", "=3", "k=[1, 2"]:
        with pytest.raises(ParamError):
            parse_param(bad)


def test_compare_specs_and_cli_read_params_the_same_way(labelled_workspace):
    spec = parse_method_spec("probe:classifier=knn:batch-size=8")
    assert spec.params == parse_params(["classifier=knn", "batch-size=8"])
    with pytest.raises(CompareError, match="cannot read value"):
        parse_method_spec("probe:k=[1, 2")
    root = labelled_workspace.root
    labelled_workspace.close()
    args = ["classify", str(root), "--method", "probe", "--model", "dinov2-small"]
    for bad, message in [("k=[1, 2", "cannot read value"), ("oops", "expected KEY=VALUE")]:
        result = CliRunner().invoke(app, [*args, "--param", bad])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
