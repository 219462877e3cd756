"""torchreid's own Market-1501 reader and evaluator on an adversarial dataset written by ``metricattack attack``.

The documentation (docs/how-to/model-zoos.md) tells users which folder to give torchreid's (and fast-reid's) reader: ``--out
X/market1501/Market-1501-v15.09.15``, then torchreid's ``root=X`` (it appends ``market1501``
and, when that folder is missing, tries to download the dataset there) and fast-reid's
``FASTREID_DATASETS=X/market1501``. This checks that torchreid parses such an output into the
splits, identities, cameras and pixels our own reader sees (torchreid drops junk images, pid -1),
and that torchreid's evaluator ranks the attacked test split as ours does with ``ap="noninterp"``
and ``ties="gallery-order"`` (the documentation's convention for comparing with torchreid).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torchreid = pytest.importorskip("torchreid")

import metricattack as ma  # noqa: E402
from metricattack.cli import main  # noqa: E402
from metricattack.data.types import JUNK_PID  # noqa: E402
from metricattack.evaluation.ranking import evaluate_distances  # noqa: E402


@pytest.fixture(scope="module")
def adversarial_market(tiny_dataset_root: Path, tiny_model_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``metricattack attack --out X/market1501/Market-1501-v15.09.15`` (FGSM, ε = 4); returns X."""
    root = tmp_path_factory.mktemp("readers")
    out = root / "adv" / "market1501" / "Market-1501-v15.09.15"
    argv = ["attack", "--checkpoint", str(tiny_model_checkpoint), "--data-root", str(tiny_dataset_root), "--dataset", "folder"]
    assert main([*argv, "--out", str(out), "--method", "fgsm", "--eps", "4", "--no-progress"]) == 0
    return root / "adv"


def test_torchreid_reads_an_adversarial_dataset(adversarial_market: Path, tiny_dataset_root: Path) -> None:
    out = adversarial_market / "market1501" / "Market-1501-v15.09.15"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the layout torchreid expects: no "deprecated data structure" warning
        theirs = torchreid.data.datasets.image.Market1501(root=str(adversarial_market), verbose=False)
    ours = ma.load_dataset("folder", out)  # the Market-1501 layout without its official counts
    for split in ("train", "query", "gallery"):
        expected = {str(r.path): (r.pid, r.camid) for r in getattr(ours, split) if r.pid != JUNK_PID}
        found = {item[0]: (item[1], item[2]) for item in getattr(theirs, split)}  # (path, pid, camid, dataset id)
        assert len(found) == len(expected) > 0, split
        if split == "train":  # torchreid relabels training identities 0..N-1: the same partition
            assert len({pid for pid, _ in found.values()}) == ours.num_train_ids()
            assert {p: c for p, (_, c) in found.items()} == {p: c for p, (_, c) in expected.items()}
        else:
            assert found == expected, split
    attacked = [r for r in ours.gallery if r.pid > 0][:5]
    for record in attacked:  # torchreid's loader (PIL) decodes the attacked pixels our reader does
        pixels = torch.from_numpy(np.array(Image.open(record.path).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(pixels, ma.read_image(record.path).mul(255).round().to(torch.uint8))
    clean = ma.load_dataset("folder", tiny_dataset_root)
    source = {r.path.name: r.path for r in clean.gallery}
    assert any(not torch.equal(ma.read_image(r.path), ma.read_image(source[r.path.name])) for r in attacked)


def test_torchreids_evaluator_ranks_it_as_ours_with_its_conventions(adversarial_market: Path, tiny_model_checkpoint: Path) -> None:
    theirs = torchreid.data.datasets.image.Market1501(root=str(adversarial_market), verbose=False)
    model = ma.load_model(tiny_model_checkpoint)
    with torch.no_grad():
        q, g = (model(torch.stack([ma.read_image(item[0]) for item in split])) for split in (theirs.query, theirs.gallery))
    dist = torch.cdist(q, g).pow(2)  # torchreid's default: squared Euclidean
    (q_pids, q_cams), (g_pids, g_cams) = (np.array([item[1:3] for item in split]).T for split in (theirs.query, theirs.gallery))
    cmc, mAP = torchreid.metrics.evaluate_rank(dist.numpy(), q_pids, g_pids, q_cams, g_cams, max_rank=10, use_cython=False)
    ours = evaluate_distances(dist, q_pids, g_pids, q_cams, g_cams, ap="noninterp", ties="gallery-order")
    assert ours.mAP == pytest.approx(mAP, abs=1e-6) and [ours.cmc[k] for k in (1, 5, 10)] == pytest.approx(
        [cmc[0], cmc[4], cmc[9]], abs=1e-6
    )
    # our own reader keeps the junk images torchreid drops; the protocol ignores them: the same numbers
    data = ma.load_dataset("folder", adversarial_market / "market1501" / "Market-1501-v15.09.15")
    assert any(r.pid == JUNK_PID for r in data.gallery)
    whole = ma.evaluate_model(model, data, ma.build_metric("euclidean"), ap="noninterp", ties="gallery-order", progress=False)
    assert whole.mAP == pytest.approx(mAP, abs=1e-6)
