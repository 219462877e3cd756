"""The gallery-side figure of the robustness protocol: the gallery images perturbed, every query clean.

The paper (Bai et al.) attacks the gallery; the protocol's headline attacks the queries. This figure
is the paper's threat model at the protocol's ε and attack strength, reported beside the headline and
never mixed into it: the ``gallery`` threat model (:mod:`metricattack.attacks.threats.gallery`: each
gallery image of an identity with an evaluated query pushed away from that identity's clean query
features, the paper's non-targeted metric loss) attacked by the registered ``apgd``
(:class:`~.protocol.GallerySide` ``steps``, one start) through the attack engine
(:func:`~metricattack.attacks.engine.attack_batches`, the loop of every gallery attack of the package),
at the headline ε, the adversarial images rounded to 8-bit pixels as a saved gallery would be.
Measured: mAP and rank-1 of the clean queries against that gallery, with bootstrap intervals over the
queries (the attacked gallery held fixed), and the reference attacks (the protocol's
``reference_methods``, the paper's step rule) on the same images, for the ``gallery-never-weaker`` check.

What is attacked: distractors, junk and identities without an evaluated query never are (the paper's
loss has no term for them): these are the *eligible* images. With the budget ``top_k``, only the
eligible images in the clean top-k of the ranking (by the evaluation protocol: junk and same-camera
matches left out) of a query they are a true match of: a match ranked far down moves AP little, and
with fewer images attacked the figure is expected at or above the full attack's mAP (read it as an
upper bound). Only the attacked images are read and run through the model: the cost follows their number.

Resume and sharding: the attacked images form a sub-gallery whose batches are the engine's (under
``torchrun`` each rank attacks whole batches of the one-process batching); the rank that finishes a
batch writes it to the records folder (``gallery-<method>-eps<ε>-<first>-<count>.safetensors``: the
adversarial features and call counts of its images), and a batch found there is read back instead of
attacked, so a killed evaluation resumes at its first unfinished batch. The rows are gathered on every rank.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..attacks.engine import FeatureModel, attack_batches, plan_attack
from ..attacks.margin import QueryGallery
from ..attacks.spec import make_spec
from ..attacks.threats import THREATS, SplitFeatures
from ..distributed import gather_indexed
from ..errors import MetricAttackError
from ..io import atomic_path
from .result import GallerySideResult, bootstrap, estimate

if TYPE_CHECKING:
    from .evaluate import Setup

START_ID = 4000  # the gallery-side APGD's start id (beside evaluate.START_IDS)


def within_top_k(side: QueryGallery, clean_distances: torch.Tensor, top_k: int, chunk: int = 256) -> torch.Tensor:
    """``[G]`` bool: the gallery images in the top ``top_k`` of the clean ranking (``clean_distances [Q, G]``,
    junk and same-camera matches left out, ties by gallery order) of a query they are a true match of."""
    near = torch.zeros(clean_distances.shape[1], dtype=torch.bool)
    for start in range(0, len(side), chunk):
        rows = torch.arange(start, min(start + chunk, len(side)))
        matches, non_matches = side.masks(rows)
        dist = clean_distances[rows].detach().float().cpu().masked_fill(~(matches | non_matches), float("inf"))
        order = torch.argsort(dist, dim=1, stable=True)[:, :top_k]
        near[order[matches.gather(1, order)]] = True
    return near


def attacked_images(setup: Setup, clean_distances: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Gallery indices of the images the figure attacks (ascending) and the number of eligible ones."""
    assert setup.protocol.gallery is not None
    eligible = THREATS.get("gallery").select(setup.dataset, setup.protocol.seed).active
    top_k = setup.protocol.gallery.top_k
    chosen = eligible if top_k is None else eligible & within_top_k(setup.side, clean_distances, top_k)
    return torch.nonzero(chosen).flatten(), int(eligible.sum())


@dataclasses.dataclass(frozen=True)
class GalleryAttack:
    """Gallery ``features [G, D]`` with the attacked rows replaced by those of their 8-bit adversarial images,
    and the passes spent (one forward per attacked image to rank it included)."""

    features: torch.Tensor
    forwards: int
    backwards: int
    zero_gradient: int


class BatchRecords:
    """Finished batches of one gallery attack (``key``) as safetensors files in ``folder`` (None: nowhere)."""

    def __init__(self, folder: Path | None, key: str) -> None:
        self.folder, self.key = folder, key

    def path(self, indices: list[int]) -> Path | None:
        return None if self.folder is None else self.folder / f"{self.key}-{indices[0]}-{len(indices)}.safetensors"

    def get(self, indices: list[int]) -> torch.Tensor | None:
        """The recorded ``[b, D + 3]`` rows of the batch ``indices`` (features, forward, backward, zero gradient), or None."""
        path = self.path(indices)
        if path is None or not path.is_file():
            return None
        tensors = load_file(str(path))
        if tensors["indices"].tolist() != indices:
            raise MetricAttackError(f"the record {path} was made for other gallery images; remove the folder {self.folder} to start over")
        return tensors["rows"]

    def put(self, indices: list[int], rows: torch.Tensor) -> None:
        path = self.path(indices)
        if path is not None:
            with atomic_path(path) as tmp:
                save_file({"indices": torch.tensor(indices, dtype=torch.long), "rows": rows.contiguous()}, str(tmp))


def attack_gallery(setup: Setup, method: str, eps: float, attacked: torch.Tensor, seed: int, **options: Any) -> GalleryAttack:
    """The ``gallery`` threat model's metric loss attacked by the registered ``method`` on the gallery images ``attacked``."""
    clean = setup.features.gallery
    setup.bar.set_postfix_str(f"gallery-{method}-eps{eps:g}", refresh=True)
    done = _attack_gallery(setup, method, eps, attacked, seed, **options) if len(attacked) else GalleryAttack(clean, 0, 0, 0)
    setup.bar.update()  # one step of the progress bar per gallery attack
    return done


def _attack_gallery(setup: Setup, method: str, eps: float, attacked: torch.Tensor, seed: int, **options: Any) -> GalleryAttack:
    clean = setup.features.gallery
    subset = dataclasses.replace(setup.dataset, gallery=tuple(setup.dataset.gallery[i] for i in attacked.tolist()))
    spec = make_spec(f"robustness gallery attack {method}", method=method, eps=eps, seed=seed, **options)
    plan = plan_attack([setup.model], setup.metric, subset, "gallery", spec, [SplitFeatures(setup.features.query, clean[attacked])])
    records = BatchRecords(setup.records.folder, f"gallery-{method}-eps{eps:g}")
    recorded: dict[int, torch.Tensor] = {}  # batch number → its recorded rows (filled before the stream starts)
    stream = attack_batches(
        plan,
        spec,
        batch_size=setup.batch_size,
        device=setup.device,
        skip=lambda number: number in recorded,
        feature_models=[FeatureModel(setup.model, clean[attacked])],
        saved=True,
    )
    order = [list(b) for b in stream.loader.batch_sampler or ()]  # this rank's batches (whole batches of one process's)
    recorded.update((n, rows) for n, b in enumerate(order) if (rows := records.get(b)) is not None)
    tables, positions = list(recorded.values()), [torch.tensor(order[n]) for n in recorded]
    for batch in stream:
        c = batch.counts
        rows = torch.cat([batch.features[0].double(), torch.stack([c.forward, c.backward, c.zero_gradient], 1).double()], 1)
        records.put(batch.indices.tolist(), rows)
        tables.append(rows)
        positions.append(batch.indices)
    local = torch.cat(tables) if tables else torch.zeros((0, 0), dtype=torch.float64)
    table = gather_indexed(local, torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long), len(attacked))
    features = clean.clone()
    features[attacked] = table[:, : clean.shape[1]].to(clean.dtype)
    spent = table[:, clean.shape[1] :]
    return GalleryAttack(features, int(spent[:, 0].sum()) + len(attacked), int(spent[:, 1].sum()), int((spent[:, 2] > 0).sum()))


def ranked(setup: Setup, gallery: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``([Q] AP, [Q] rank-1 hit)`` of the clean queries against ``gallery [G, D]`` (NaN without a true match)."""
    s = setup.side
    side = QueryGallery(setup.metric, gallery, s.q_pids.tolist(), s.q_cams.tolist(), s.g_pids.tolist(), s.g_cams.tolist(), s.ap_convention)
    distances, queries = side.distances(setup.features.query), torch.arange(len(side))
    return side.ap(distances, queries), side.first_hit(distances, queries)


def gallery_side(setup: Setup, eps: float, clean_distances: torch.Tensor) -> tuple[GallerySideResult, np.ndarray, np.ndarray]:
    """The gallery-side figure at ``eps`` (see the module docstring) and its per-query APs and rank-1 hits ``[Q]``."""
    protocol = setup.protocol
    assert protocol.gallery is not None
    attacked, eligible = attacked_images(setup, clean_distances)
    apgd = attack_gallery(setup, "apgd", eps, attacked, protocol.seed * 1_000_003 + START_ID, steps=protocol.gallery.steps, eot=setup.eot)
    references = {}
    spent = [apgd.forwards, apgd.backwards]
    for method in protocol.gallery.reference_methods:
        done = attack_gallery(setup, method, eps, attacked, protocol.seed)
        references[method] = float(100 * np.nanmean(ranked(setup, done.features)[0]))
        spent = [spent[0] + done.forwards, spent[1] + done.backwards]
    setup.spent[0] += spent[0]
    setup.spent[1] += spent[1]
    ap, hit = ranked(setup, apgd.features)
    boot = bootstrap(protocol, {"ap": ap, "hit": hit})
    result = GallerySideResult(
        eps=eps,
        method="apgd",
        steps=protocol.gallery.steps,
        top_k=protocol.gallery.top_k,
        eligible=eligible,
        attacked=len(attacked),
        mAP=estimate(boot, "ap"),
        rank1=estimate(boot, "hit"),
        references=references,
        forwards=apgd.forwards,
        backwards=apgd.backwards,
        zero_gradient=apgd.zero_gradient,
    )
    return result, ap, hit
