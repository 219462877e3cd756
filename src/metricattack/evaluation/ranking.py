"""Ranking metrics for re-ID retrieval: CMC, mAP and mINP from a query × gallery distance matrix.

Protocol (Market-1501 / DukeMTMC-reID / MSMT17):

* gallery images with the query's identity **and** the query's camera are ignored;
* junk gallery images (pid −1) are ignored;
* distractors (pid 0) and every other identity are wrong matches;
* the *valid matches* (positives) of a query are the remaining gallery images of its identity.
  Queries without any valid match are left out of every average and counted in
  ``num_queries − num_valid_queries``.

Ties (documented, deterministic rule): gallery items are ranked by distance, and items with
**equal distances are ranked by gallery index** (a stable sort of the row), in both
evaluators. ``-0.0`` equals ``0.0``; NaN distances are rejected.

Average precision, for the i-th positive (0-based) at 0-based position ``r_i`` among the valid
(non-ignored) gallery items of a query with ``n`` positives:

* ``"market"`` (default, used by the paper): the official Market-1501 trapezoidal AP,
  ``AP = Σ_i (1/n) · (old_i + prec_i) / 2`` with ``prec_i = (i+1)/(r_i+1)`` and
  ``old_i = i/r_i`` (``1`` when ``r_i = 0``), i.e. the precision just before the hit.
* ``"noninterp"``: non-interpolated AP of torchreid / fast-reid, ``AP = (1/n) Σ_i prec_i``.

CMC@k is the fraction of valid queries whose first positive lies in the top k; mINP (Ye et
al., 2021) averages ``n / (r_{n−1} + 1)``, the positives' share of the list up to the hardest one.

:func:`evaluate_distances` is fast: it never sorts whole rows. Only the ranks of the positives
are needed, and those depend only on the gallery items closer than the farthest positive, so
per query it selects, in one vectorised pass over a block of rows, the items with distance ≤
the largest positive distance, and sorts just those (as packed ``row | distance | gallery
index`` 64-bit integers, which encodes the tie rule). Blocks of rows bound memory.
:func:`evaluate_distances_reference` is the straightforward per-query argsort evaluator it is
tested and benchmarked against.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ..data.types import JUNK_PID
from ..errors import MetricAttackError

APConvention = Literal["market", "noninterp"]
AP_CONVENTIONS: tuple[str, ...] = ("market", "noninterp")
TIE_RULE = "equal distances are ranked by gallery index (stable sort)"
DEFAULT_RANKS = (1, 5, 10, 20)
# Elements of the distance matrix handled per block by the fast path (bounds temporary memory
# to a few hundred MB whatever the gallery size).
BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class RankingResult:
    """Retrieval quality of one query × gallery evaluation.

    Attributes:
        cmc: rank k → fraction of valid queries with a positive in the top k.
        mAP: mean average precision over valid queries (convention ``ap_convention``).
        mINP: mean inverse negative penalty over valid queries.
        per_query_ap: ``[num_queries]`` AP per query, NaN for queries without a valid match.
        num_queries: number of queries.
        num_valid_queries: queries with at least one valid match (the averages' denominator).
        ap_convention: ``"market"`` or ``"noninterp"``.
        tie_rule: how equal distances are ordered.
    """

    cmc: dict[int, float]
    mAP: float
    mINP: float
    per_query_ap: np.ndarray = field(repr=False)
    num_queries: int
    num_valid_queries: int
    ap_convention: str
    tie_rule: str = TIE_RULE

    def to_dict(self, include_per_query: bool = False) -> dict[str, Any]:
        """JSON-able summary (per-query APs only when asked; NaN becomes ``None``)."""
        out: dict[str, Any] = {
            "cmc": {str(k): v for k, v in self.cmc.items()},
            "mAP": self.mAP,
            "mINP": self.mINP,
            "num_queries": self.num_queries,
            "num_valid_queries": self.num_valid_queries,
            "ap_convention": self.ap_convention,
            "tie_rule": self.tie_rule,
        }
        if include_per_query:
            out["per_query_ap"] = [None if np.isnan(v) else float(v) for v in self.per_query_ap]
        return out


# ----------------------------------------------------------------------------- input checks


def _as_numpy(values: Any) -> np.ndarray:
    """numpy view (or float32 copy for half precision) of a tensor or array-like."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def _ids(values: Any, name: str, count: int | None) -> np.ndarray:
    arr = _as_numpy(values)
    if arr.ndim != 1 or (count is not None and arr.shape[0] != count):
        expected = f"[{count}]" if count is not None else "[N]"
        raise MetricAttackError(f"{name} must be a 1-D array of shape {expected}, got shape {tuple(arr.shape)}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        try:
            whole = bool(np.all(np.equal(np.mod(arr.astype(np.float64), 1), 0)))
        except (TypeError, ValueError):
            whole = False
        if not whole:
            raise MetricAttackError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _check_options(ap: str, ranks: Sequence[int]) -> tuple[int, ...]:
    if ap not in AP_CONVENTIONS:
        raise MetricAttackError(f"unknown AP convention {ap!r}; expected one of {', '.join(AP_CONVENTIONS)}")
    out = tuple(int(k) for k in ranks)
    if not out or any(k < 1 for k in out):
        raise MetricAttackError(f"CMC ranks must be positive integers, got {tuple(ranks)}")
    return out


def _as_distances(block: Any, rows: int, cols: int, name: str = "distance matrix") -> np.ndarray:
    arr = _as_numpy(block)
    if arr.shape != (rows, cols):
        raise MetricAttackError(f"{name} must have shape [{rows}, {cols}] (queries × gallery), got {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise MetricAttackError(f"{name} contains NaN values")
    return arr


class _Protocol:
    """Identities and cameras of one evaluation, checked, with each query's special pairs listed.

    ``pos_*``: (query, gallery) pairs of valid matches (same pid, other camera, pid ≠ −1);
    ``ign_*``: pairs ignored by the protocol (same pid and same camera); both sorted by query
    then gallery index, with ``*_start[q]`` the offset of query ``q``'s pairs.
    """

    def __init__(self, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any) -> None:
        self.q_pids = _ids(q_pids, "q_pids", None)
        self.g_pids = _ids(g_pids, "g_pids", None)
        self.q_camids = _ids(q_camids, "q_camids", len(self.q_pids))
        self.g_camids = _ids(g_camids, "g_camids", len(self.g_pids))
        if len(self.q_pids) == 0:
            raise MetricAttackError("cannot evaluate: the query set is empty")
        if len(self.g_pids) == 0:
            raise MetricAttackError("cannot evaluate: the gallery is empty")
        self.num_queries = len(self.q_pids)
        self.num_gallery = len(self.g_pids)
        self.junk_cols = np.flatnonzero(self.g_pids == JUNK_PID)
        rows, cols = self._same_pid_pairs()
        same_cam = self.g_camids[cols] == self.q_camids[rows]
        self.pos_rows, self.pos_cols = rows[~same_cam], cols[~same_cam]
        self.ign_rows, self.ign_cols = rows[same_cam], cols[same_cam]
        queries = np.arange(self.num_queries + 1)
        self.pos_start = np.searchsorted(self.pos_rows, queries)
        self.ign_start = np.searchsorted(self.ign_rows, queries)

    def _same_pid_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(query, gallery) index pairs with equal, non-junk pids, sorted by query then gallery index."""
        order = np.argsort(self.g_pids, kind="stable")
        sorted_pids = self.g_pids[order]
        lo = np.searchsorted(sorted_pids, self.q_pids, side="left")
        hi = np.searchsorted(sorted_pids, self.q_pids, side="right")
        hi[self.q_pids == JUNK_PID] = lo[self.q_pids == JUNK_PID]
        counts = hi - lo
        rows = np.repeat(np.arange(self.num_queries), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        cols = order[np.repeat(lo, counts) + offsets]  # stable order: gallery index ascending per query
        return rows, cols


def match_counts(q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per query, ``(positives [Q], valid gallery items [Q])`` under the protocol above.

    Valid items are the gallery minus junk and the query's same-identity same-camera images;
    positives are the valid items with the query's identity (0 for a query without a match).
    """
    proto = _Protocol(q_pids, g_pids, q_camids, g_camids)
    positives = np.diff(proto.pos_start)
    valid = proto.num_gallery - len(proto.junk_cols) - np.diff(proto.ign_start)
    return positives, valid


# ----------------------------------------------------------------------------- fast path


def _float_order_key(values: np.ndarray) -> np.ndarray:
    """Map float32 ``values`` to int64 in ``[0, 2³²)`` with the same order (−0.0 → 0.0)."""
    bits = (values.astype(np.float32) + np.float32(0.0)).view(np.int32)
    ordered = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))
    return ordered.astype(np.int64) + (1 << 31)


def _block_positive_ranks(block: np.ndarray, proto: _Protocol, start: int) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks among valid items of every positive of queries ``start .. start+len(block)``.

    ``block [C, G]`` is float, NaN-free. Ignored items are masked with NaN in a copy; the
    *candidates* of a row are its valid items not farther than its farthest positive; only
    they are sorted. Returns ``(rows, ranks)`` (rows relative to ``start``), sorted by row then rank.
    """
    nrows, ncols = block.shape
    p0, p1 = proto.pos_start[start], proto.pos_start[start + nrows]
    if p0 == p1:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    work = np.array(block, dtype=np.float64 if block.dtype == np.float64 else np.float32, order="C")  # a copy
    work[:, proto.junk_cols] = np.nan
    i0, i1 = proto.ign_start[start], proto.ign_start[start + nrows]
    work[proto.ign_rows[i0:i1] - start, proto.ign_cols[i0:i1]] = np.nan

    pos_rows = proto.pos_rows[p0:p1] - start
    pos_cols = proto.pos_cols[p0:p1]
    pos_vals = work[pos_rows, pos_cols]
    threshold = np.full(nrows, np.nan, dtype=work.dtype)  # NaN: no candidate in rows without positives
    seg = proto.pos_start[start : start + nrows + 1] - p0
    has_pos = seg[1:] > seg[:-1]
    threshold[has_pos] = np.maximum.reduceat(pos_vals, seg[:-1][has_pos])

    mask = work <= threshold[:, None]
    counts = np.count_nonzero(mask, axis=1)
    flat = np.flatnonzero(mask)
    rows = np.repeat(np.arange(nrows), counts)
    cols = flat - rows * ncols
    values = work.reshape(-1)[flat]
    row_start = np.cumsum(counts) - counts

    if work.dtype == np.float32:
        col_bits = max(1, int(ncols - 1).bit_length())
        row_shift = 32 + col_bits
        packed = (rows << row_shift) | (_float_order_key(values) << col_bits) | cols
        packed.sort()  # keys are unique: order = (row, distance, gallery index)
        pos_keys = np.sort((pos_rows << row_shift) | (_float_order_key(pos_vals) << col_bits) | pos_cols)
        pos_rows = pos_keys >> row_shift
        position = np.searchsorted(packed, pos_keys)
    else:  # float64 leaves no room to pack: stable lexicographic sort by (row, distance, index)
        rank_of = np.empty(flat.size, dtype=np.int64)
        rank_of[np.lexsort((cols, np.add(values, 0.0), rows))] = np.arange(flat.size)
        # sorting by (row, ...) first keeps pos_rows (ascending) aligned with the sorted positions
        position = np.sort(rank_of[np.searchsorted(flat, pos_rows * ncols + pos_cols)])
    return pos_rows, position - row_start[pos_rows]


def _rows_per_block(ncols: int) -> int:
    """Rows per fast-path block: bounded by memory and by the bits left for the row in a packed key."""
    col_bits = max(1, int(ncols - 1).bit_length())
    if col_bits > 31:
        raise MetricAttackError(f"gallery of {ncols} images is too large for the fast evaluator (max 2^31)")
    return max(1, min(BLOCK_ELEMENTS // max(ncols, 1), 1 << (31 - col_bits)))


# ----------------------------------------------------------------------------- metrics from ranks


class _QueryStats:
    """Per-query AP, first-hit rank and INP, filled block by block."""

    def __init__(self, num_queries: int) -> None:
        self.ap = np.full(num_queries, np.nan)
        self.first = np.full(num_queries, -1, dtype=np.int64)
        self.inp = np.full(num_queries, np.nan)

    def add(self, start: int, rows: np.ndarray, ranks: np.ndarray, ap: str) -> None:
        """Record queries ``start + rows`` whose positives have 0-based ``ranks`` (sorted per row)."""
        if rows.size == 0:
            return
        seg_start = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        seg_end = np.r_[seg_start[1:], rows.size] - 1
        ngood = (seg_end - seg_start + 1).astype(np.float64)
        i = (np.arange(rows.size) - np.repeat(seg_start, seg_end - seg_start + 1)).astype(np.float64)
        r = ranks.astype(np.float64)
        precision = (i + 1) / (r + 1)
        if ap == "market":
            old = np.divide(i, r, out=np.ones_like(r), where=r > 0)
            terms = (old + precision) / 2
        else:
            terms = precision
        query = start + rows[seg_start]
        self.ap[query] = np.add.reduceat(terms, seg_start) / ngood
        self.first[query] = ranks[seg_start]
        self.inp[query] = ngood / (ranks[seg_end] + 1)

    def result(self, ranks: tuple[int, ...], ap: str) -> RankingResult:
        valid = self.first >= 0
        nvalid = int(valid.sum())
        if nvalid == 0:
            cmc = {k: 0.0 for k in ranks}
            return RankingResult(cmc, 0.0, 0.0, self.ap, len(self.ap), 0, ap)
        first = self.first[valid]
        cmc = {k: float(np.count_nonzero(first < k) / nvalid) for k in ranks}
        return RankingResult(
            cmc=cmc,
            mAP=float(self.ap[valid].mean()),
            mINP=float(self.inp[valid].mean()),
            per_query_ap=self.ap,
            num_queries=len(self.ap),
            num_valid_queries=nvalid,
            ap_convention=ap,
        )


# ----------------------------------------------------------------------------- public API


def evaluate_distance_blocks(
    blocks: Iterable[tuple[int, Any]],
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    ap: APConvention = "market",
    ranks: Sequence[int] = DEFAULT_RANKS,
) -> RankingResult:
    """Like :func:`evaluate_distances`, with the matrix given as ``(first_query_row, block [C, G])``
    pairs that cover every query exactly once, in order (e.g. computed chunk by chunk).
    """
    cmc_ranks = _check_options(ap, ranks)
    return _evaluate_blocks(blocks, _Protocol(q_pids, g_pids, q_camids, g_camids), ap, cmc_ranks)


def _evaluate_blocks(blocks: Iterable[tuple[int, Any]], proto: _Protocol, ap: str, cmc_ranks: tuple[int, ...]) -> RankingResult:
    stats = _QueryStats(proto.num_queries)
    step = _rows_per_block(proto.num_gallery)
    covered = 0
    for start, chunk in blocks:
        if start != covered:
            raise MetricAttackError(f"distance blocks must cover queries in order: expected a block at row {covered}, got {start}")
        chunk_arr = _as_numpy(chunk)
        nrows = chunk_arr.shape[0] if chunk_arr.ndim == 2 and chunk_arr.shape[1] == proto.num_gallery else -1
        if nrows < 1 or covered + nrows > proto.num_queries:
            raise MetricAttackError(
                f"distance block at row {start} must have shape [C, {proto.num_gallery}] with 1 ≤ C ≤ "
                f"{proto.num_queries - covered}, got {tuple(chunk_arr.shape)}"
            )
        for s in range(0, nrows, step):
            e = min(nrows, s + step)
            sub = _as_distances(chunk_arr[s:e], e - s, proto.num_gallery)
            rows, pos_ranks = _block_positive_ranks(sub, proto, start + s)
            stats.add(start + s, rows, pos_ranks, ap)
        covered += nrows
    if covered != proto.num_queries:
        raise MetricAttackError(f"distance blocks covered {covered} of {proto.num_queries} queries")
    return stats.result(cmc_ranks, ap)


def evaluate_distances(
    dist: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    ap: APConvention = "market",
    ranks: Sequence[int] = DEFAULT_RANKS,
) -> RankingResult:
    """CMC, mAP and mINP of ``dist [Q, G]`` (numpy or torch; smaller = more similar).

    ``q_pids``, ``q_camids`` are ``[Q]``, ``g_pids``, ``g_camids`` ``[G]`` integers. See the
    module docstring for the protocol, AP conventions and tie rule. Example::

        >>> evaluate_distances([[0.1, 0.5]], [1], [1, 2], [0], [1, 1]).cmc[1]
        1.0
    """
    cmc_ranks = _check_options(ap, ranks)
    proto = _Protocol(q_pids, g_pids, q_camids, g_camids)
    arr = _as_numpy(dist)
    if arr.shape != (proto.num_queries, proto.num_gallery):
        raise MetricAttackError(
            f"distance matrix must have shape [{proto.num_queries}, {proto.num_gallery}] (queries × gallery), got {tuple(arr.shape)}"
        )
    return _evaluate_blocks([(0, arr)], proto, ap, cmc_ranks)


def evaluate_distances_reference(
    dist: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    ap: APConvention = "market",
    ranks: Sequence[int] = DEFAULT_RANKS,
) -> RankingResult:
    """The straightforward evaluator: per query, a stable argsort of the whole row.

    Same protocol, tie rule and result as :func:`evaluate_distances`; kept as the baseline the
    fast path is tested and benchmarked against.
    """
    cmc_ranks = _check_options(ap, ranks)
    proto = _Protocol(q_pids, g_pids, q_camids, g_camids)
    arr = _as_distances(dist, proto.num_queries, proto.num_gallery)
    stats = _QueryStats(proto.num_queries)
    for q in range(proto.num_queries):
        order = np.argsort(arr[q] + 0.0, kind="stable")
        pids, cams = proto.g_pids[order], proto.g_camids[order]
        keep = (pids != JUNK_PID) & ~((pids == proto.q_pids[q]) & (cams == proto.q_camids[q]))
        matches = (pids[keep] == proto.q_pids[q]) & (proto.q_pids[q] != JUNK_PID)
        ngood = int(matches.sum())
        if ngood == 0:
            continue
        hits = np.flatnonzero(matches)
        precision_at = np.cumsum(matches) / np.arange(1, len(matches) + 1)
        if ap == "market":
            before = np.where(hits > 0, precision_at[np.maximum(hits - 1, 0)], 1.0)
            stats.ap[q] = float(((before + precision_at[hits]) / 2).sum() / ngood)
        else:
            stats.ap[q] = float(precision_at[hits].sum() / ngood)
        stats.first[q] = hits[0]
        stats.inp[q] = ngood / (hits[-1] + 1)
    return stats.result(cmc_ranks, ap)
