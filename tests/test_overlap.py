"""Host work overlapped with the model (:mod:`metricattack.overlap`, issue #25): results in order and
unchanged, a worker's exception raised unchanged in the caller, no thread left behind, no hang; the
host processes kept, at the lowest priority, without torch, a dead one reported. The
export's bytes with and without overlap: ``tests/test_attack_export.py``."""

from __future__ import annotations

import itertools
import operator
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from metricattack import overlap
from metricattack.attacks.engine import interleave
from metricattack.data.imagefiles import decode_batch
from metricattack.data.loading import save_png
from metricattack.data.types import ImageRecord
from metricattack.errors import DatasetError, MetricAttackError, WriteError
from metricattack.evaluation.features import extract_features
from metricattack.models.reid import ReIDModel
from metricattack.overlap import HOST_NICE, READ_AHEAD, Background, HostProcess, on_host, prefetch

WAIT = 60.0  # seconds a liveness check waits before it fails (never reached when the code is right)


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("metricattack-")]


def test_prefetch_loads_the_next_items_while_the_caller_holds_one() -> None:
    second_started = threading.Event()

    def load(i: int) -> int:
        if i == 1:
            second_started.set()
        return i * i

    stream = prefetch(range(5), load, workers=2)
    assert next(stream) == (0, 0)
    assert second_started.wait(WAIT)  # item 1 is read while the caller works on item 0
    assert list(stream) == [(i, i * i) for i in range(1, 5)]
    assert worker_threads() == []


def test_prefetch_without_workers_loads_each_item_when_it_is_reached_in_this_thread() -> None:
    events: list[str] = []
    caller = threading.get_ident()

    def load(i: int) -> int:
        assert threading.get_ident() == caller
        events.append(f"load {i}")
        return i

    for item, _ in prefetch(range(3), load, workers=0):
        events.append(f"use {item}")
    assert events == ["load 0", "use 0", "load 1", "use 1", "load 2", "use 2"]


def test_a_failed_load_is_raised_unchanged_after_the_items_before_it() -> None:
    error = DatasetError("cannot read image /data/0002_c1s1_000451_03.jpg: image file is truncated")

    def load(i: int) -> int:
        if i == 2:
            raise error
        return i

    seen = []
    with pytest.raises(DatasetError) as info:
        for item, _ in prefetch(range(6), load, workers=2):
            seen.append(item)
    assert info.value is error and seen == [0, 1]
    assert worker_threads() == []


def test_closing_the_stream_early_stops_reading_and_leaves_no_thread() -> None:
    consumed = []
    stream = prefetch((consumed.append(i) or i for i in itertools.count()), lambda i: i, workers=2)
    assert [item for item, _ in itertools.islice(stream, 2)] == [0, 1]
    stream.close()
    assert len(consumed) <= 2 + READ_AHEAD + 1 and worker_threads() == []  # the source is read lazily


def test_batches_without_an_attacked_image_are_spread_between_the_others() -> None:
    """A Market-1501 gallery lists its distractors and junk first: without this their writing would find no
    model work to overlap with. An attacked batch comes first (the model starts on the first batch read) and
    last (what is written after it overlaps with nothing)."""
    assert interleave([3, 4], [0, 1, 2]) == [3, 0, 1, 2, 4]
    assert interleave([5, 6, 7, 8], [9]) == [5, 6, 9, 7, 8]
    assert interleave([1, 2, 3, 4], [5, 6, 7, 8]) == [1, 5, 2, 6, 7, 3, 8, 4]
    assert interleave([5], [1, 2]) == [5, 1, 2]
    assert interleave([], [0, 1]) == [0, 1] and interleave([0, 1], []) == [0, 1]


def test_background_runs_jobs_aside_and_reports_them_in_order() -> None:
    caller = threading.get_ident()
    ran, reported = [], []
    with Background(workers=2) as background:
        for i in range(5):
            background.submit(lambda i=i: ran.append((i, threading.get_ident())), then=lambda i=i: reported.append(i))
    assert reported == [0, 1, 2, 3, 4]
    assert sorted(i for i, _ in ran) == [0, 1, 2, 3, 4] and all(thread != caller for _, thread in ran)
    assert worker_threads() == []


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failed_job_is_raised_unchanged_and_no_job_outlives_the_block(workers: int) -> None:
    error = WriteError("could not write /out/bounding_box_test/0001_c1s1_000001_00.jpg: no space left on the device")
    finished, reported = [], []

    def job(i: int) -> None:
        if i == 1:
            raise error
        finished.append(i)

    with pytest.raises(WriteError) as info, Background(workers) as background:
        for i in range(4):
            background.submit(lambda i=i: job(i), then=lambda i=i: reported.append(i))
    assert info.value is error and reported == [0]
    assert worker_threads() == []  # every submitted job ended before the block was left


def test_an_error_of_the_caller_waits_for_running_jobs_without_reporting_them() -> None:
    release, finished, reported = threading.Event(), [], []

    def slow() -> None:
        assert release.wait(WAIT)
        finished.append(True)

    with pytest.raises(KeyboardInterrupt), Background(workers=1) as background:
        background.submit(slow, then=lambda: reported.append(True))
        threading.Timer(0.05, release.set).start()
        raise KeyboardInterrupt
    assert finished == [True] and reported == [] and worker_threads() == []


@pytest.mark.parametrize("workers", [-1, 1.5, True])
def test_a_bad_worker_count_is_refused(workers) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="workers must be an integer >= 0"):
        Background(workers)


def test_features_and_errors_are_the_same_with_and_without_overlap(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    records = []
    for i in range(11):
        size = (32, 16) if i % 3 else (24, 12)  # two sizes: batches of one size each
        path = tmp_path / f"{i + 1:04d}_c1s1_{i:06d}_00.png"
        save_png(torch.rand(3, *size, generator=gen), path)
        records.append(ImageRecord(path, i + 1, 0))
    model = ReIDModel("resnet18", num_classes=4, input_size=(32, 16))
    plain = extract_features(model, records, batch_size=3, progress=False, workers=0)
    assert torch.equal(extract_features(model, records, batch_size=3, progress=False, workers=2), plain)
    records[7].path.write_bytes(records[7].path.read_bytes()[:60])  # truncated
    messages = []
    for workers in (0, 2):
        with pytest.raises(DatasetError, match=records[7].path.name) as info:
            extract_features(model, records, batch_size=3, progress=False, workers=workers)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and worker_threads() == []


def test_host_processes_are_kept_run_at_the_lowest_priority_and_never_import_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "0001_c1s1_000001_00.png"
    save_png(torch.rand(3, 8, 4, generator=torch.Generator().manual_seed(0)), path)
    pid = on_host(2, os.getpid)  # a call runs in a host process, which stays for the next
    monkeypatch.chdir(tmp_path)  # after the process started: a relative path still names the caller's file
    assert on_host(2, decode_batch, [path.name]).tolist() == decode_batch([path]).tolist()
    assert pid != os.getpid() and on_host(2, os.getpid) == pid
    assert on_host(2, os.nice, 0) == min(os.nice(0) + HOST_NICE, 19)
    assert on_host(2, eval, "'torch' in __import__('sys').modules") is False
    assert on_host(0, os.getpid) == os.getpid()  # no workers: in this thread


def test_a_host_process_started_in_a_folder_imports_none_of_its_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("json", "signal", "pickle"):  # what the process imports while it boots
        (tmp_path / f"{name}.py").write_text(f"open({str(tmp_path / 'MARKER')!r}, 'w').write({name!r})\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(overlap, "HOST_NICE", 3)  # a user's lower setting, for the processes started after it
    process = HostProcess()
    try:
        assert process.call(os.getcwd, ()) == str(tmp_path) and process.call(os.nice, (0,)) == min(os.nice(0) + 3, 19)
    finally:
        process.close()
    assert not (tmp_path / "MARKER").exists()


def test_an_argument_that_does_not_pickle_fails_before_it_reaches_the_process() -> None:
    pid = on_host(2, os.getpid)
    with pytest.raises(TypeError, match="pickle"):
        on_host(2, len, [threading.Lock()])
    assert on_host(2, os.getpid) == pid and on_host(2, len, [1, 2]) == 2  # the same process, its stream intact


def test_a_call_interrupted_before_its_reply_never_hands_that_reply_to_the_next_call(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: HostProcess, data: bytes) -> None:  # the request sent, then Ctrl-C before the reply is read
        self._process.stdin.write(data)
        self._process.stdin.flush()
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(HostProcess, "exchange", interrupted)
        with pytest.raises(KeyboardInterrupt):
            on_host(2, os.getpid)
    assert on_host(2, operator.add, 1, 2) == 3  # not the interrupted call's reply (a pid)


def test_a_host_process_that_dies_is_reported_and_the_next_call_gets_a_new_one() -> None:
    first = on_host(2, os.getpid)
    with pytest.raises(MetricAttackError, match="host worker process died while running _exit .*run the same command again"):
        on_host(2, os._exit, 3)
    assert on_host(2, os.getpid) not in (first, os.getpid())


def test_a_script_without_a_main_guard_is_not_run_again_by_the_host_processes(tmp_path: Path) -> None:
    """multiprocessing's spawn would re-run this script's top level in every child (and fail there)."""
    (tmp_path / "unguarded.py").write_text(
        "import os\n"
        "from metricattack.data.imagefiles import write_pngs\n"
        "from metricattack.overlap import on_host\n"
        "import numpy as np\n"
        "with open('runs.txt', 'a') as log:\n"
        "    log.write(f'{os.getpid()}\\n')\n"
        "print(on_host(2, write_pngs, '.', ['a.png'], np.zeros((1, 4, 2, 3), np.uint8)))\n",
        encoding="utf-8",
    )
    done = subprocess.run([sys.executable, "unguarded.py"], cwd=tmp_path, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert "'a.png'" in done.stdout and len((tmp_path / "runs.txt").read_text().split()) == 1 and (tmp_path / "a.png").is_file()
