"""The writer of an attacked split: PNG files in the source's layout, the manifest, and the
per-batch records that let a killed run resume (the ``attack`` command; the benchmark and the
defense through :func:`~.export.export_attack`).

Layout of ``out`` (readable by ``load_dataset("folder", out)`` and any Market-1501 parser):

* the attacked split, every image as a lossless PNG at native resolution and the same relative
  path; pixels on the 1/255 grid, within ⌊ε⌋/255 of the original and inside [0,1] (see
  :func:`~.ops.quantize`); images that are not attacked (junk, distractors, ...) are
  written unchanged as PNG too. File names (``file_names``): ``"source"`` (default) keeps every
  name *with its extension*, so ``0002_c1s1_000451_03.jpg`` holds PNG data — the usual
  Market-1501 readers list ``*.jpg`` and decode by content (PIL, OpenCV, torchvision), so they
  load the attacked copy unchanged; ``"png"`` renames to ``0002_c1s1_000451_03.png``;
* the other splits copied with their original names (copies, never hard links: changing the
  adversarial dataset must not change the source; reflinks where the file system has them);
* ``manifest.json``: attack spec (method options resolved), threat model, metric, models (checkpoint SHA-256), seed, software
  versions, source dataset fingerprint, and per file ``source → output`` name and SHA-256;
* ``attack_results.json``: clean vs adversarial CMC/mAP (images reloaded from disk *and* the
  in-memory float images), mean true-positive distance, targeted success, measured L∞, and
  the chance level (expected CMC/mAP of a random ranking, :mod:`~metricattack.evaluation.chance`),
  and per attacked image the method's cost (forward / backward passes) and zero gradients
  (``calls``; images whose gradient was zero are also logged as a warning);
* ``.attack/``: the run identity and per-batch completion records (resumption);
* ``.metricattack.lock``: the lock one run at a time holds (:mod:`metricattack.outputs`).

Resumption: a batch counts as done when its JSON record exists (written last, atomically,
after its PNGs and its in-memory feature record). A re-run with the same run identity skips
done batches; the batches are deterministic, so the result equals an uninterrupted run. A run
with another identity is refused while the folder holds finished batches of the first; the
record of a run that failed before finishing any batch (e.g. on a truncated source image)
does not block the next one. A second run on the same folder while one is running is refused
with the first one's pid, host and start time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..data.imagefiles import write_pngs
from ..data.loading import read_image
from ..data.types import SPLITS, ImageRecord, ReIDDataset
from ..distributed import barrier, is_main_process, rank_and_world
from ..errors import MetricAttackError
from ..io import atomic_path, atomic_write_json, copy_file, environment_versions, sha256_file
from ..outputs import check_output_folder
from ..overlap import DEFAULT_WORKERS, WRITE_QUEUE, Background, on_host
from ..progress import Progress
from .engine import AttackedBatch, AttackPlan, FeatureModel, attack_batches
from .ops import linf_255, quantize
from .problem import COUNT_NAMES
from .spec import AttackSpec

MANIFEST_FORMAT = "metricattack.adversarial-dataset/2"
STATE_DIR = ".attack"
FILE_NAMES = ("source", "png")


def is_attack_run(folder: Path) -> bool:
    """True when ``folder`` holds an attack run (finished or not) of this package."""
    return (Path(folder) / STATE_DIR / "run.json").is_file()


def check_output_location(out: Path, source_root: Path, option: str = "output folder") -> None:
    """Refuse an output folder inside the source dataset, a file, an unwritable location, or a
    non-empty folder that holds no attack run (:func:`metricattack.outputs.check_output_folder`)."""
    check_output_folder(option, out, command="attack", is_previous=is_attack_run, datasets=[source_root])


def output_name(rel: Path, attacked: bool, file_names: str = "source") -> Path:
    """Relative output path: the source's, or for attacked images with ``file_names="png"`` the
    same stem with a ``.png`` extension (the content is PNG either way)."""
    return rel.with_suffix(".png") if attacked and file_names == "png" else rel


def relative(record: ImageRecord, root: Path) -> Path:
    """``record``'s path relative to the dataset ``root`` (the layout the output mirrors)."""
    try:
        return record.path.relative_to(root)
    except ValueError:
        raise MetricAttackError(f"image {record.path} is not inside the dataset root {root}; cannot mirror the layout") from None


def claim_run(out: Path, identity: dict[str, Any]) -> None:
    """Record the run identity, or check it equals the one of the run being resumed.

    The caller holds the folder's lock (:func:`~metricattack.outputs.claim_output`). A recorded
    run of another identity blocks only when it finished some work (batch records or a
    manifest); the record of a run that failed before that is replaced. Every rank looks before
    rank 0 writes (first barrier): a rank that found the file rank 0 had just written would skip
    the barrier and deadlock the others in their next collective.
    """
    path = out / STATE_DIR / "run.json"
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    barrier()
    if previous is not None and previous.get("key") == identity["key"]:
        return
    if previous is not None:
        done = sum(1 for _ in (out / STATE_DIR / "batches").glob("*/*.json"))
        if done or (out / "manifest.json").exists():
            raise MetricAttackError(
                f"output folder {out} holds a different attack run ({done} batches done; other options, models, data or "
                f"batch size: {_identity_difference(previous, identity)}); choose another --out or delete that folder"
            )
    if is_main_process():
        atomic_write_json(path, identity)
    barrier()


def _identity_difference(previous: dict[str, Any], identity: dict[str, Any]) -> str:
    """The fields in which two run identities differ, for the refusal message."""
    fields = sorted(k for k in set(previous) | set(identity) if k != "key" and previous.get(k) != identity.get(k))
    return ", ".join(fields) or "unknown fields"


def batch_dir(out: Path) -> Path:
    """This rank's folder of batch records."""
    rank, world = rank_and_world()
    return out / STATE_DIR / "batches" / f"rank{rank}-of{world}"


def batch_done(out: Path, number: int) -> bool:
    """True when batch ``number`` of this rank is completely written (its JSON record exists)."""
    return (batch_dir(out) / f"{number:06d}.json").is_file()


class BatchWriter:
    """Writes one attacked batch (on the CPU) in ``parts`` jobs that may run on different threads, so the
    writing of the model's last batch, which overlaps with nothing, is shared between the writer threads.

    Each part quantises its share of the images (:func:`~.ops.quantize`: per pixel, so the bytes do
    not depend on ``parts``), encodes it as PNG, hashes and writes it (atomically;
    :func:`~metricattack.data.imagefiles.write_pngs`, in a host process when ``processes`` > 0:
    :func:`~metricattack.overlap.on_host`); the part that
    finishes last writes the tensor record (indices, in-memory features and L∞, call counts), then
    the JSON record with every file's SHA-256, last and atomically: the batch counts as done. A part
    that fails leaves the batch without records (redone on resumption). Tensor and host work only,
    so the parts run on worker threads while the model attacks the next batch.
    """

    def __init__(
        self,
        out: Path,
        batch: AttackedBatch,
        records: Sequence[ImageRecord],
        root: Path,
        eps: float,
        file_names: str,
        parts: int,
        processes: int = 0,
    ) -> None:
        self.out, self.batch, self.records, self.root, self.eps, self.file_names = out, batch, records, root, eps, file_names
        self.processes = processes
        count = len(batch.indices)
        self.parts = [range(count * k // parts, count * (k + 1) // parts) for k in range(parts)]
        self.files: dict[str, str] = {}
        self._remaining, self._lock = parts, threading.Lock()

    def jobs(self) -> list[Callable[[], None]]:
        """One job per part, in order."""
        return [functools.partial(self._write_part, part) for part in self.parts]

    def _write_part(self, part: range) -> None:
        batch = self.batch
        share = slice(part.start, part.stop)
        pixels = quantize(batch.adversarial[share], batch.clean[share], self.eps).cpu().permute(0, 2, 3, 1).contiguous().numpy()
        names = [output_name(relative(self.records[i], self.root), True, self.file_names).as_posix() for i in batch.indices[share].tolist()]
        checksums = on_host(self.processes, write_pngs, self.out, names, pixels)
        with self._lock:
            self.files.update(checksums)
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self._write_records()

    def _write_records(self) -> None:
        batch = self.batch
        tensors = {"indices": batch.indices.clone(), "linf_memory": linf_255(batch.adversarial, batch.clean).cpu().contiguous()}
        tensors.update({f"calls.{name}": getattr(batch.counts, name).clone() for name in COUNT_NAMES})
        tensors.update({f"features.{m}": feats.contiguous() for m, feats in enumerate(batch.features)})
        stem = batch_dir(self.out) / f"{batch.number:06d}"
        with atomic_path(stem.with_suffix(".safetensors")) as tmp:
            save_file(tensors, str(tmp))
        atomic_write_json(stem.with_suffix(".json"), {"batch": batch.number, "files": self.files})


def write_attack(
    out: Path,
    plan: AttackPlan,
    spec: AttackSpec,
    root: Path,
    feature_models: Sequence[FeatureModel],
    *,
    batch_size: int,
    device: str | torch.device,
    file_names: str,
    workers: int = DEFAULT_WORKERS,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Attack ``plan``'s split (:func:`~.engine.attack_batches`) and write it batch by batch
    (:class:`BatchWriter`), skipping batches already written (resumption).

    With ``workers`` > 0 the next batches are decoded, and the previous ones quantised, encoded, hashed
    and written (each in ``workers`` parts), on that many threads each while the model attacks this one
    (:mod:`metricattack.overlap`; the decoding, encoding, hashing and writing in host processes); the
    model's thread only hands the batches over;
    0: read, attack and write in turn in this thread. The files are the same byte for byte.
    ``on_batch(number)`` runs after each batch is completely written; on any error the batches
    being written are finished (complete, atomic) before it is raised, unchanged.
    """
    done = functools.partial(batch_done, out)
    batches = attack_batches(plan, spec, batch_size=batch_size, device=device, skip=done, feature_models=feature_models, workers=workers)
    finished = sum(done(number) for number in range(len(batches)))
    bar: Progress[object] = Progress(desc=f"attack {plan.split}", total=len(batches), unit="batch", initial=finished, report=progress)
    parts = max(workers, 1)
    with bar, Background(workers, depth=WRITE_QUEUE * parts) as background, closing(iter(batches)) as stream:
        for batch in stream:
            on_cpu = dataclasses.replace(batch, clean=batch.clean.cpu(), adversarial=batch.adversarial.cpu())  # no device memory queued
            *first, last = BatchWriter(out, on_cpu, plan.records, root, spec.eps, file_names, parts, workers).jobs()
            for job in first:
                background.submit(job)
            # ``then`` runs after its job and every job before it, so after the batch's records are written
            background.submit(last, then=functools.partial(_written, bar, on_batch, batch.number))


def _written(bar: Progress[object], on_batch: Callable[[int], None] | None, number: int) -> None:
    """A batch is completely written: count it, tell ``on_batch``."""
    bar.update()
    if on_batch is not None:
        on_batch(number)


@dataclass(frozen=True)
class BatchRecords:
    """What the batch records of a finished run hold, in split order.

    Attributes:
        features: per evaluated model, in-memory adversarial features ``[N, D]``.
        linf_memory: ``[N]`` in-memory L∞ (0..255 units).
        counts: ``forward`` / ``backward`` / ``zero_gradient`` → ``[N]`` per-image call counts.
        checksums: output file → SHA-256.
    """

    features: list[torch.Tensor]
    linf_memory: torch.Tensor
    counts: dict[str, torch.Tensor]
    checksums: dict[str, str]


def gather_batch_records(out: Path, count: int, num_eval: int) -> BatchRecords:
    """The batch records of ``out`` (:class:`BatchRecords`) for a split of ``count`` images."""
    feats: list[dict[int, torch.Tensor]] = [{} for _ in range(num_eval)]
    linf: dict[int, float] = {}
    counts: dict[str, dict[int, int]] = {name: {} for name in COUNT_NAMES}
    checksums: dict[str, str] = {}
    for record in sorted((out / STATE_DIR / "batches").glob("*/*.json")):
        info = json.loads(record.read_text(encoding="utf-8"))
        tensors = load_file(str(record.with_suffix(".safetensors")))
        indices = tensors["indices"].tolist()
        for m in range(num_eval):
            feats[m].update(zip(indices, tensors[f"features.{m}"], strict=True))
        linf.update(zip(indices, tensors["linf_memory"].tolist(), strict=True))
        for name in COUNT_NAMES:
            counts[name].update(zip(indices, tensors[f"calls.{name}"].tolist(), strict=True))
        checksums.update(info["files"])
    if len(linf) != count:
        raise MetricAttackError(f"{out}: batch records cover {len(linf)} of {count} images; re-run the attack to finish it")
    order = range(count)
    return BatchRecords(
        [torch.stack([f[i] for i in order]) for f in feats],
        torch.tensor([linf[i] for i in order]),
        {name: torch.tensor([c[i] for i in order], dtype=torch.long) for name, c in counts.items()},
        checksums,
    )


def write_other_splits(
    out: Path, dataset: ReIDDataset, attacked_split: str, file_names: str, checksums: dict[str, str]
) -> list[dict[str, Any]]:
    """Copy the splits that are not attacked (rank 0; copies, never hard links) and list every file
    of the output: ``{"split", "source", "output", "attacked", "sha256"}``."""
    files: list[dict[str, Any]] = []
    for split in SPLITS:
        attacked = split == attacked_split
        for record in dataset.split(split):
            rel = relative(record, dataset.root)
            target = output_name(rel, attacked, file_names)
            if not attacked and is_main_process():
                copy_file(record.path, out / target)
            files.append({"split": split, "source": rel.as_posix(), "output": target.as_posix(), "attacked": attacked})
    barrier()
    for entry in files:
        entry["sha256"] = checksums[entry["output"]] if entry["attacked"] else sha256_file(out / entry["output"])
    return files


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """``manifest.json`` (rank 0) with this package's format and the software versions added."""
    if is_main_process():
        atomic_write_json(out / "manifest.json", {"format": MANIFEST_FORMAT, **manifest, "versions": environment_versions()})


def adversarial_records(out: Path, dataset: ReIDDataset, records: Sequence[ImageRecord], file_names: str) -> tuple[ImageRecord, ...]:
    """The written attacked images as records (same identities and cameras, in split order)."""
    return tuple(ImageRecord(out / output_name(relative(r, dataset.root), True, file_names), r.pid, r.camid) for r in records)


def measured_linf(original: Sequence[ImageRecord], adversarial: Sequence[ImageRecord]) -> torch.Tensor:
    """Per-image L∞ ``[N]`` between image files decoded from disk, in exact 0..255 integer steps."""
    out = torch.empty(len(original))
    for i, (a, b) in enumerate(zip(original, adversarial, strict=True)):
        out[i] = (read_image(b.path).mul(255).round() - read_image(a.path).mul(255).round()).abs().max()
    return out
