"""Chance level: the expected CMC, mAP and mINP of a uniformly random ranking, in closed form.

On a small gallery a random ranking scores far above zero (4 positives among 80 valid items
give an expected AP near 0.09), so "mAP fell to 0.06" means little without this floor. With
``n`` positives among ``N`` valid items of a query (protocol of :mod:`.ranking`), over all
``N!`` orders equally likely:

* CMC@k: ``1 − C(N−n, k) / C(N, k)`` (no positive in the first k);
* non-interpolated AP: ``(H_N + (n−1)(N − H_N)/(N−1)) / N`` with ``H_N`` the N-th harmonic
  number (linearity over positions: a hit at position k has expected precision
  ``(1 + (k−1)(n−1)/(N−1))/k``);
* Market-1501 AP: ``(n/N + AP_noninterp) / 2``, since the precisions just before the hits sum
  to ``n²/N`` in expectation;
* mINP: ``E[n/(r+1)]`` for the last positive's 0-based rank ``r``, ``P(r) = C(r, n−1)/C(N, n)``.

Averages run over queries with at least one positive, like the evaluator's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import gammaln

from ..data.types import ReIDDataset
from .ranking import DEFAULT_RANKS, APConvention, RankingResult, _check_options, match_counts


def _harmonic(n: np.ndarray) -> np.ndarray:
    """``H_n = Σ_{k ≤ n} 1/k`` for integer arrays ``n ≥ 1`` (exact partial sums)."""
    table = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, int(n.max()) + 1))])
    return table[n]


def expected_ap(positives: np.ndarray, valid: np.ndarray, ap: APConvention = "market") -> np.ndarray:
    """Expected AP ``[Q]`` of a random ranking for queries with ``positives ≥ 1`` among ``valid`` items."""
    n, big_n = positives.astype(np.float64), valid.astype(np.float64)
    h = _harmonic(valid)
    pairs = np.divide(n - 1, big_n - 1, out=np.zeros_like(n), where=big_n > 1)
    noninterp = (h + pairs * (big_n - h)) / big_n
    return noninterp if ap == "noninterp" else (n / big_n + noninterp) / 2


def expected_cmc(positives: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """``[Q]`` probability that a random ranking puts a positive in the top ``k``."""
    miss = np.ones(len(positives))
    for j in range(k):  # P(no positive in the first k) = Π_j (N − n − j) / (N − j)
        miss *= np.clip((valid - positives - j) / np.maximum(valid - j, 1), 0.0, None)
    return 1.0 - miss


def expected_inp(positives: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``[Q]`` expected INP (``n / (last positive's rank + 1)``) of a random ranking."""
    out = np.empty(len(positives))
    for n, big_n in set(zip(positives.tolist(), valid.tolist(), strict=True)):
        r = np.arange(n - 1, big_n, dtype=np.float64)
        log_p = gammaln(r + 1) - gammaln(n) - gammaln(r - n + 2) - (gammaln(big_n + 1) - gammaln(n + 1) - gammaln(big_n - n + 1))
        out[(positives == n) & (valid == big_n)] = float(np.sum(np.exp(log_p) * n / (r + 1)))
    return out


def chance_ranking(
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    ap: APConvention = "market",
    ranks: Sequence[int] = DEFAULT_RANKS,
) -> RankingResult:
    """Expected :class:`RankingResult` of a uniformly random ranking under the re-ID protocol.

    Same arguments as :func:`~metricattack.evaluation.ranking.evaluate_distances` without the
    distances; ``per_query_ap`` holds each query's expected AP (NaN without a valid match).
    """
    cmc_ranks = _check_options(ap, ranks)
    positives, valid = match_counts(q_pids, g_pids, q_camids, g_camids)
    ok = positives > 0
    per_query = np.full(len(positives), np.nan)
    if not ok.any():
        return RankingResult({k: 0.0 for k in cmc_ranks}, 0.0, 0.0, per_query, len(positives), 0, ap)
    n, big_n = positives[ok], valid[ok]
    per_query[ok] = expected_ap(n, big_n, ap)
    return RankingResult(
        cmc={k: float(expected_cmc(n, big_n, k).mean()) for k in cmc_ranks},
        mAP=float(per_query[ok].mean()),
        mINP=float(expected_inp(n, big_n).mean()),
        per_query_ap=per_query,
        num_queries=len(positives),
        num_valid_queries=int(ok.sum()),
        ap_convention=ap,
    )


def dataset_chance(dataset: ReIDDataset, ap: APConvention = "market") -> RankingResult:
    """:func:`chance_ranking` of ``dataset``'s query and gallery."""
    return chance_ranking(
        [r.pid for r in dataset.query],
        [r.pid for r in dataset.gallery],
        [r.camid for r in dataset.query],
        [r.camid for r in dataset.gallery],
        ap=ap,
    )
