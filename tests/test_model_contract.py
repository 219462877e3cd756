"""The model contract on a probe: one message naming the model for every broken model, a warning
for the ones that still give valid numbers (constant, integer, non-deterministic features)."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import pytest
import torch

import metricattack as ma
from metricattack.cli import main
from metricattack.errors import MetricAttackError
from metricattack.evaluation.chance import dataset_chance
from metricattack.evaluation.features import extract_features
from metricattack.models.contract import ModelContractWarning, check_model, feature_drift
from metricattack.models.sources import ModelSource

MODULE = "contract_models"
MODELS = '''
"""Models that break the contract in the ways re-ID code does."""
import torch
from torch import nn


class Good(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, stride=4)

    def features(self, x):
        return nn.functional.adaptive_avg_pool2d(self.conv(x), 1).flatten(1)

    def forward(self, x):
        return self.features(x)


class Pair(Good):
    def forward(self, x):
        f = self.features(x)
        return f, f @ torch.ones(6, 751)


class Named(Good):
    def forward(self, x):
        return {"feat": self.features(x), "logits": torch.zeros(len(x), 3)}


class Raising(Good):
    def forward(self, x):
        raise ValueError("shapes [2, 6] and [7, 3] do not match\\nsecond line of the message")


class Detached(Good):
    def forward(self, x):
        return self.features(x).detach()


class Constant(Good):
    def forward(self, x):
        return self.features(x) * 0 + 1  # ignores its input, still attached to the graph


class ZeroWidth(Good):
    def forward(self, x):
        return self.features(x)[:, :0]


class Integer(Good):
    def forward(self, x):
        return (self.features(x) * 1000).long()


class NanForBigBatches(Good):
    def forward(self, x):
        f = self.features(x)
        if len(x) > 2:
            f = f.clone()
            f[1] = float("nan")
        return f


class ParametersOnly(Good):
    def forward(self, x):
        return self.conv.bias.expand(len(x), 6)  # has a graph, but not to the images


class InPlace(Good):
    def forward(self, x):
        return self.features(x.sub_(0.5))


class Dropout(Good):
    def forward(self, x):
        return nn.functional.dropout(self.features(x), 0.5, training=True)  # left on in eval mode


def build(name):
    return lambda: globals()[name]()


good, pair, named, raising, detached, constant = (build(n) for n in ("Good", "Pair", "Named", "Raising", "Detached", "Constant"))
zero_width, integer, nan_for_big_batches, in_place, dropout, parameters_only = (
    build(n) for n in ("ZeroWidth", "Integer", "NanForBigBatches", "InPlace", "Dropout", "ParametersOnly")
)


def double():
    return Good().double()


def on_meta():
    with torch.device("meta"):
        return Good()


def build_raises():
    raise RuntimeError("cannot reach the weights server\\nmore")
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("contract")
    (folder / f"{MODULE}.py").write_text(MODELS, encoding="utf-8")
    sys.path.insert(0, str(folder))
    yield __import__(MODULE)
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


def spec(function: str) -> str:
    return f"python:{MODULE}:{function}"


@pytest.mark.parametrize(
    "function,purpose,message",
    [
        (
            "pair",
            "features",
            r"model M returned a tuple \(\[2, 6\] float32, \[2, 751\] float32\) instead of one features tensor.*net\(x\)\[0\]",
        ),
        ("named", "features", r"model M returned a dict \('feat': \[2, 6\] float32, 'logits': \[2, 3\] float32\).*net\(x\)\['features'\]"),
        (
            "raising",
            "features",
            r"^model M: forward\(\) raised ValueError: shapes \[2, 6\] and \[7, 3\] do not match on 2 random probe images of 128x64$",
        ),
        ("zero_width", "features", r"model M returned features of width 0 \(\[2, 0\]\)"),
        (
            "double",
            "features",
            r"forward\(\) raised RuntimeError: .* \(its parameters are torch.float64: .* cast the model with .float\(\)\)",
        ),
        ("on_meta", "features", r"model M: 'conv.weight' is on the meta device"),
        ("detached", "attack", r"model M returns features that carry no gradient to the images"),
        ("integer", "attack", r"model M returns int64 features: integer features carry no gradient"),
        ("parameters_only", "attack", r"model M returns features that carry no gradient to the images"),
        ("in_place", "attack", r"model M modifies its input images in place"),
    ],
)
def test_a_broken_model_is_one_message_naming_it(models, function: str, purpose: str, message: str) -> None:
    with pytest.raises(MetricAttackError, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelContractWarning)
        check_model(getattr(models, function)(), "M", purpose=purpose)


@pytest.mark.parametrize(
    "function,message",
    [
        ("constant", r"model M gives the same features to different images: every distance ties, so it scores exactly the chance level"),
        ("integer", r"model M returns int64 features: they are ranked as float32"),
        (
            "dropout",
            r"model M is not deterministic in eval mode: the L2-normalised features of one image lie up to [0-9.]+ apart in two passes",
        ),
    ],
)
def test_a_degenerate_model_is_warned_about_and_still_evaluated(models, function: str, message: str) -> None:
    with pytest.warns(ModelContractWarning, match=message):
        report = check_model(getattr(models, function)(), "M")
    assert report.feature_dim == 6


def test_a_good_model_passes_silently_once_per_model_and_purpose(models) -> None:
    model = models.good()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = check_model(model, "M")
        assert check_model(model) is report and len(calls) == 2  # two passes, then cached
        attack = check_model(model, purpose="attack")
    assert len(calls) == 5 and check_model(model, purpose="attack") is attack and check_model(model) is attack  # the stricter check covers
    assert (report.feature_dim, report.dtype, report.drift, report.constant) == (6, "float32", 0.0, False)
    assert model.training  # put back in its mode


def test_what_only_a_gradient_attack_needs(models) -> None:
    check_model(models.in_place(), "M")  # evaluation never reuses a batch: no error, no warning
    for function in ("detached", "integer", "parameters_only"):  # a gradient-free method needs no gradient
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ModelContractWarning)
            check_model(getattr(models, function)(), "M", purpose="attack", gradient=False)
    with pytest.raises(MetricAttackError, match="modifies its input images in place"):
        check_model(models.in_place(), "M", purpose="attack", gradient=False)  # it would corrupt any attack
    with pytest.warns(ModelContractWarning, match="gives the same features to different images"):
        check_model(models.constant(), "M", purpose="attack")  # zero gradients: the attack counts them


def test_feature_drift_measures_dropout(models) -> None:
    images = torch.rand(4, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    assert feature_drift(models.good(), images) == 0.0
    assert feature_drift(models.dropout(), images) > 0.1


def test_sources_name_the_spec(models) -> None:
    with pytest.raises(
        MetricAttackError,
        match=r"^--model python:contract_models:build_raises: build_raises\(\) raised RuntimeError: cannot reach the weights server$",
    ):
        ModelSource.parse(spec("build_raises")).load()
    with pytest.raises(MetricAttackError, match=r"^model python:contract_models:pair returned a tuple"):
        ModelSource.parse(spec("pair")).load()
    with pytest.raises(MetricAttackError, match=r"^model python:contract_models:detached returns features that carry no gradient"):
        ModelSource.parse(spec("detached")).load(purpose="attack")
    assert not ModelSource.parse(spec("detached")).load().model.training  # fine for evaluation


def test_extract_features_names_the_image_with_non_finite_features(models, tiny_dataset_root: Path) -> None:
    data = ma.load_dataset("folder", tiny_dataset_root)
    model = models.nan_for_big_batches()  # passes the 2-image probe
    second = re.escape(str(data.gallery[1].path))
    with pytest.raises(
        MetricAttackError, match=rf"^model NanForBigBatches returned NaN or infinite features for image {second}; expected finite features$"
    ):
        extract_features(model, data.gallery, batch_size=4, progress=False)


def test_metric_attack_refuses_a_model_without_gradient(models) -> None:
    attack = ma.MetricAttack(models.detached(), eps=2)
    with pytest.raises(MetricAttackError, match=r"model Detached returns features that carry no gradient"):
        attack(torch.rand(2, 3, 32, 16), torch.rand(2, 1, 6))


def test_cli_constant_model_scores_chance_with_a_warning(models, tiny_dataset_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["evaluate", "--model", spec("constant"), "--data-root", str(tiny_dataset_root), "--dataset", "folder", "--no-progress"]) == 0
    )
    out, err = capsys.readouterr()
    assert err.count("warning: model python:contract_models:constant gives the same features") == 1
    chance = dataset_chance(ma.load_dataset("folder", tiny_dataset_root))
    values = out.splitlines()[out.splitlines().index(next(line for line in out.splitlines() if "rank-1" in line)) + 1].split()
    assert values[0] == f"{100 * chance.cmc[1]:.2f}" and values[4] == f"{100 * chance.mAP:.2f}"


@pytest.mark.parametrize(
    "command,function,message",
    [
        ("evaluate", "named", r"model python:contract_models:named returned a dict"),
        ("evaluate", "raising", r"model python:contract_models:raising: forward\(\) raised ValueError: shapes"),
        ("attack", "detached", r"model python:contract_models:detached returns features that carry no gradient"),
    ],
)
def test_cli_one_message_no_traceback(
    models, tiny_dataset_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, function: str, message: str
) -> None:
    argv = [command, "--model", spec(function), "--data-root", str(tiny_dataset_root), "--dataset", "folder", "--no-progress"]
    if command == "attack":
        argv += ["--out", str(tmp_path / "adv")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count(": error: ") == 1 and "Traceback" not in err and re.search(message, err), err
    assert not (tmp_path / "adv").exists()


def test_cli_names_a_non_deterministic_model_in_every_run(models, tiny_dataset_root: Path, tmp_path: Path, capsys) -> None:
    """Issue #19 item 9: dropout left on in eval mode is warned about once per run, naming the model, in
    evaluate, attack and robustness (one process: the second run's warning was once swallowed as already
    shown); the numbers still come."""
    model = ["--model", spec("dropout"), "--data-root", str(tiny_dataset_root), "--dataset", "folder"]
    common = [*model, "--no-progress"]
    attack = ["--out", str(tmp_path / "adv"), "--eps", "2", "--method-option", "steps=1"]
    robustness = ["--out", str(tmp_path / "robust"), "--version", "smoke"]
    for argv in (["evaluate", *common], ["attack", *common, *attack], ["robustness", *common, *robustness], ["evaluate", *common]):
        assert main(argv) == 0
        out, err = capsys.readouterr()
        assert err.count("warning: model python:contract_models:dropout is not deterministic in eval mode") == 1, err
        assert "mAP" in out
