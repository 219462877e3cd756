"""The package's stage cache: folders per key (run once, logged, keys, resumption), slots (defend's stages), damaged outputs, ranks other than 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metricattack import stages as stages_module
from metricattack.errors import ConfigError
from metricattack.stages import StageCache, StageSpec, read_stage_log


def test_slot_runs_once_refuses_other_settings_or_reruns(tmp_path: Path) -> None:
    calls: list[int] = []

    def work(n: int):
        return lambda: calls.append(n) or {"n": n}

    cache = StageCache(tmp_path)
    assert cache.run_slot(StageSpec("base", "base", {"n": 1}), work(1)) == {"n": 1}
    assert StageCache(tmp_path).run_slot(StageSpec("base", "base", {"n": 1}), work(1)) == {"n": 1}
    assert calls == [1] and [s.kind for s in cache.ran] == ["base"]
    marker = json.loads((tmp_path / "stages" / "base.json").read_text())
    assert marker["config"] == {"n": 1} and marker["outputs"] == {"n": 1} and "versions" in marker
    with pytest.raises(ConfigError, match=r"stage 'base' was made with other settings"):
        StageCache(tmp_path).run_slot(StageSpec("base", "base", {"n": 2}), work(2))
    assert StageCache(tmp_path).run_slot(StageSpec("base", "base", {"n": 2}), work(2), on_change="rerun") == {"n": 2}
    assert calls == [1, 2]
    assert [e["status"] for e in read_stage_log(tmp_path)] == ["ran", "cached", "ran"]


def test_finished_stage_with_a_damaged_output_runs_again(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)
    spec = StageSpec("features", "query", {"split": "query"})

    def work(folder: Path) -> dict:
        (folder / "f.txt").write_text("ok")
        return {"file": "f.txt"}

    def valid(folder: Path, outputs: dict) -> bool:
        return (folder / outputs["file"]).read_text() == "ok"

    cache.run(spec, work, valid=valid)
    (cache.folder(spec) / "f.txt").write_text("damaged")
    cache.run(spec, work, valid=valid)
    assert (cache.folder(spec) / "f.txt").read_text() == "ok"
    assert [e["status"] for e in read_stage_log(tmp_path)] == ["ran", "ran"]


def test_only_rank_zero_writes_markers_and_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages_module, "is_main_process", lambda: False)
    cache = StageCache(tmp_path)
    spec = StageSpec("features", "gallery", {})
    assert cache.run(spec, lambda folder: {"rows": 3}) == {"rows": 3}
    assert not cache.is_done(spec) and read_stage_log(tmp_path) == []


def test_stage_runs_once_and_logs(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)
    calls = []

    def work(folder: Path) -> dict:
        calls.append(folder)
        (folder / "x.txt").write_text("done")
        return {"value": 3}

    spec = StageSpec("demo", "a", {"n": 1})
    assert cache.run(spec, work) == {"value": 3}
    assert StageCache(tmp_path).run(spec, work) == {"value": 3}
    assert len(calls) == 1
    assert [e["status"] for e in read_stage_log(tmp_path)] == ["ran", "cached"]
    marker = json.loads((cache.folder(spec) / "stage.json").read_text())
    assert marker["config"] == {"n": 1} and "versions" in marker


def test_stage_key_depends_on_config_upstream_and_code() -> None:
    base = StageSpec("demo", "a", {"n": 1}, upstream=("k1",), code=("benchmark",))
    assert base.key == StageSpec("demo", "other label", {"n": 1}, upstream=("k1",), code=("benchmark",)).key
    assert base.key != StageSpec("demo", "a", {"n": 2}, upstream=("k1",), code=("benchmark",)).key
    assert base.key != StageSpec("demo", "a", {"n": 1}, upstream=("k2",), code=("benchmark",)).key
    assert base.key != StageSpec("demo", "a", {"n": 1}, upstream=("k1",), code=("io",)).key
    # results depend on the CPU thread count: a stage made with another count is another stage
    assert base.threads == torch.get_num_threads()
    assert base.key != StageSpec("demo", "a", {"n": 1}, upstream=("k1",), code=("benchmark",), threads=base.threads + 1).key


def test_a_run_resumed_with_another_thread_count_recomputes(tmp_path: Path) -> None:
    calls: list[int] = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 1, 2):
            torch.set_num_threads(threads)
            StageCache(tmp_path).run(StageSpec("train", "B1", {"epochs": 2}), lambda folder, t=threads: calls.append(t) or {})
        assert calls == [1, 2]
        torch.set_num_threads(1)
        StageCache(tmp_path).run_slot(StageSpec("base", "base", {}), dict)
        torch.set_num_threads(2)
        with pytest.raises(ConfigError, match=r"stage 'base' was made with other settings \(with 1 CPU thread, this run has 2\)"):
            StageCache(tmp_path).run_slot(StageSpec("base", "base", {}), dict)
    finally:
        torch.set_num_threads(before)


def test_interrupted_stage_reruns_in_same_folder(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)
    spec = StageSpec("demo", "a", {})

    def crash(folder: Path) -> dict:
        (folder / "partial.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.run(spec, crash)
    assert not cache.is_done(spec)
    seen = cache.run(spec, lambda folder: {"resumed_from": (folder / "partial.txt").read_text()})
    assert seen == {"resumed_from": "half"} and cache.is_done(spec)
