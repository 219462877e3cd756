"""Issue #19 item 8: configs that YAML would accept but that are wrong or dangerous. Each gives one
message naming the file (and line) or option, before any work: duplicate keys, alias bombs,
Python tags, non-UTF-8 text, malformed overrides, empty experiment lists, one model under two
names, and a learning rate that makes training diverge."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from metricattack.benchmark.config import load_benchmark_config
from metricattack.benchmark.context import ModelRecord
from metricattack.benchmark.resources import refuse_same_weights
from metricattack.cli import main
from metricattack.config import MAX_VALUES, apply_overrides, read_yaml
from metricattack.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TRAIN_RECIPE = ROOT / "configs" / "synthetic" / "tiny-fixture.yaml"
BENCHMARK = ROOT / "configs" / "tiny.yaml"

BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
)
LIST_SIZES = [10]  # values in a..i expanded: a list counts 1 + its items; a = 1 + 9 strings, b = 1 + 9 copies of a, ...
for _ in range(8):
    LIST_SIZES.append(1 + 9 * LIST_SIZES[-1])
EXPANDED = 1 + 9 + sum(LIST_SIZES)  # the top mapping, its 9 keys, the 9 lists


def one_message(err: str) -> str:
    assert err.count(": error: ") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "text, message",
    [
        ("optimizer:\n  lr: 0.1\n  lr: 0.2\n", r"line 3: key 'lr' is given twice in one mapping \(first on line 2\)"),
        (BILLION_LAUGHS, rf"aliases expand to {EXPANDED:,} values, more than the {MAX_VALUES:,}"),
        ("a: &a [1, *a]\n", "an alias refers to the collection that contains it"),
        ("seed: !!python/object/apply:os.system ['echo pwned']\n", r"line 1: .*python/object/apply:os.system.*plain data"),
        ("data: {root: [1, 2}\n", "is not valid YAML"),
    ],
)
def test_yaml_a_config_may_not_hold(text: str, message: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        read_yaml(path)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    assert f"config file {path}" in one_message(capsys.readouterr().err) and not (tmp_path / "run").exists()


def test_what_yaml_allows_still_works(tmp_path: Path) -> None:
    assert len(BILLION_LAUGHS.splitlines()) == 9
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  x: 3\nl: [*b, *b]\n", encoding="utf-8")
    assert read_yaml(path) == {"base": {"x": 1, "y": 2}, "m": {"x": 3, "y": 2}, "l": [{"x": 1, "y": 2}] * 2}


def test_non_utf8_config_and_malformed_overrides(tmp_path: Path, capsys) -> None:
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text \(byte 0xe9 at offset 9\)"):
        read_yaml(latin)
    for override, message in [
        ("attack.eps=[5,", r"override 'attack.eps=\[5,' is not valid YAML"),
        ("seed=!!python/name:os.system", r"override 'seed=!!python/name:os.system', line 1: .*python/name:os.system"),
        ("attack={eps: 5, eps: 8}", r"key 'eps' is given twice"),
    ]:
        with pytest.raises(ConfigError, match=message):
            apply_overrides({}, [override])
        assert main(["benchmark", "--config", str(BENCHMARK), "--out", str(tmp_path / "run"), "--set", override]) == 2
        assert "override" in one_message(capsys.readouterr().err)
    assert main(["benchmark", "--config", str(latin), "--out", str(tmp_path / "run")]) == 2
    assert "is not UTF-8 text" in one_message(capsys.readouterr().err) and not (tmp_path / "run").exists()


def test_benchmark_refuses_no_experiment_and_one_model_under_two_names(tiny_model_checkpoint, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="experiments.only is empty, so no experiment would run"):
        load_benchmark_config(BENCHMARK, ["experiments.only=[]"])
    assert main(["benchmark", "--config", str(BENCHMARK), "--out", str(tmp_path / "run"), "--only", ","]) == 2
    assert "--only ',' names no experiment" in one_message(capsys.readouterr().err)
    copy = tmp_path / "copy" / "model.safetensors"
    copy.parent.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(Path(tiny_model_checkpoint).with_suffix(suffix), copy.with_suffix(suffix))
    recipe = yaml.safe_load(BENCHMARK.read_text(encoding="utf-8"))
    recipe["models"][3] = {"name": "T1", "checkpoint": str(tiny_model_checkpoint), "test_only": True}
    recipe["models"].append({"name": "T2", "checkpoint": str(copy), "test_only": True})
    config = tmp_path / "twice.yaml"
    config.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"models 'T1' and 'T2' are the same checkpoint \(SHA-256 [0-9a-f]{16}"):
        load_benchmark_config(config)
    with pytest.raises(ConfigError, match="models 'B1' and 'B3' are the same training recipe and seed"):
        load_benchmark_config(BENCHMARK, ["models.B3.train.loss={cross_entropy: {}}", "models.B3.train.batch={batch_size: 16}"])
    trained = ModelRecord("/runs/x/cache/model/k/train/model.safetensors", "ab" * 32, "trained", 0, 1.0)
    given = ModelRecord("/elsewhere/model.safetensors", "ab" * 32, "given", None, None)
    with pytest.raises(ConfigError, match="models 'B1' and 'C' are the same weights"):
        refuse_same_weights(SimpleNamespace(records={"B1": trained, "C": given}))  # type: ignore[arg-type]


@pytest.mark.parametrize("lr, message", [("1e30", "is not finite"), ("10", "the mean loss is")])
def test_a_diverging_learning_rate_stops_training(lr: str, message: str, tiny_dataset_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--config", str(TRAIN_RECIPE), "--out", str(out), f"data.root={tiny_dataset_root}"]
    assert main([*argv, "schedule.epochs=2", f"optimizer.lr={lr}"]) == 2
    err = one_message(capsys.readouterr().err)
    assert f"training diverged in epoch 1 at learning rate {float(lr):.4g}" in err and message in err and "optimizer.lr" in err
    assert not list(out.rglob("*.safetensors"))
