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


def test_values_no_method_takes_are_refused_before_any_work(labelled_workspace):
    from naturelens.methods import make_method
    from naturelens.methods.params import check_values

    for method, params, says in [
        ("probe", {"C": -1}, "C must be 'auto' or a number above 0"),
        ("probe", {"classifier": "knn", "k": 0}, "k must be a whole number of at least 1"),
        ("probe", {"batch_size": -5}, "batch_size must be a whole number of at least 1"),
        ("probe", {"precision": "fp8"}, "precision must be one of"),
        ("finetune", {"lr": -1}, "lr must be a number above 0"),
        ("finetune", {"warmup": 1.5}, "warmup must be at least 0 and below 1"),
        ("prompt", {"max_tokens": 0}, "max_tokens must be a whole number of at least 1"),
        ("prompt", {"concurrency": True}, "concurrency must be a whole number"),
    ]:
        with pytest.raises(ParamError, match=says):
            make_method(method, **params)
    import numpy as np

    check_values({"batch_size": np.int64(8), "lr": np.float32(1e-3), "C": "auto", "k": "auto"})
    root = labelled_workspace.root
    labelled_workspace.close()
    args = ["classify", str(root), "--method", "probe", "--model", "dinov2-small"]
    result = CliRunner().invoke(app, [*args, "--param", "C=-1"])
    assert result.exit_code == 2 and result.output.startswith("error: C must be"), result.output


def test_values_set_on_a_method_after_it_is_made_are_checked_when_it_learns(labelled_workspace):
    from naturelens.methods import make_method
    from naturelens.methods.base import PhotoSet

    ws = labelled_workspace
    ids = ws.photo_ids(labelled=True)
    labels = [ws.labels()[i] for i in ids]
    for method, name, value, says in [
        ("probe", "C", -1, "C must be 'auto' or a number above 0"),
        ("finetune", "warmup", 1.0, "warmup must be at least 0 and below 1"),
        ("finetune", "epochs", 0, "epochs must be a whole number of at least 1"),
    ]:
        learner = make_method(method)
        setattr(learner, name, value)
        with pytest.raises(ParamError, match=says):
            learner.fit(PhotoSet(ws, ids), labels)
