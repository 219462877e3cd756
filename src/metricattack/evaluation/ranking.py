"""Ranking metrics for re-ID retrieval: CMC, mAP and mINP from a query × gallery distance matrix.

Protocol (Market-1501 / DukeMTMC-reID / MSMT17):

* gallery images with the query's identity **and** the query's camera are ignored;
* junk gallery images (pid −1) are ignored;
* distractors (pid 0) and every other identity are wrong matches;
* the *valid matches* (positives) of a query are the remaining gallery images of its identity.
  Queries without any valid match are left out of every average and counted in
  ``num_queries − num_valid_queries``.

Average precision, for the i-th positive (0-based) at 0-based position ``r_i`` among the valid
(non-ignored) gallery items of a query with ``n`` positives:

* ``"market"`` (default; the paper names no AP code, and its numbers are compared with this one):
  the official Market-1501 trapezoidal AP,
  ``AP = Σ_i (1/n) · (old_i + prec_i) / 2`` with ``prec_i = (i+1)/(r_i+1)`` and
  ``old_i = i/r_i`` (``1`` when ``r_i = 0``), i.e. the precision just before the hit.
* ``"noninterp"``: non-interpolated AP of torchreid / fast-reid, ``AP = (1/n) Σ_i prec_i``.

CMC@k is the fraction of valid queries whose first positive lies in the top k; mINP (Ye et
al., 2021) averages ``n / (r_{n−1} + 1)``, the positives' share of the list up to the hardest one.
``-0.0`` equals ``0.0``; NaN distances are rejected.

**Ties** (``ties=``). Valid items at equal distance from a query form a *tie group*: the model
ranks them equally. Quantised or saturated features make such groups (a constant model puts
the whole gallery in one), and an order read off anything else (the gallery's file order
follows the person id) would raise a score the model did not earn:

* ``"expected"`` (default): every metric of a query is its **expectation over the orders of
  its tie groups, each order equally likely** (independently per group). A constant model
  scores exactly the chance level of :mod:`.chance`; without ties every number is bit for bit
  the one of a plain sort (``"gallery-order"``).
* ``"gallery-order"``: equal distances ranked by gallery index (a stable sort of the row), the
  rule of earlier metricattack versions and of torchreid's / fast-reid's evaluators on
  tie-free distances (with ties those rank by ``np.argsort``'s default sort, whose order of
  equal values depends on the numpy build: with numpy 2.4 on this machine it is not stable
  even for 8 items). For parity tests; it rewards whatever the gallery order follows.

Closed forms of ``"expected"``: a tie group occupies positions ``s .. s+m−1`` (0-based among
the valid items), holds ``p`` positives and has ``c`` positives before it; ``B = (p−1)/(m−1)``
(0 when ``m = 1``), ``H_k`` the k-th harmonic number. Each position of the group holds a
positive with probability ``p/m`` and, given one at ``s+t``, the group's other positives fill
its ``t`` earlier positions with expectation ``tB`` (hypergeometric), so by linearity
(the non-interpolated case is McSherry & Najork, ECIR 2008):

* sum of the group's precisions ``prec``: ``(p/m)·[(c+1−B(s+1))·(H_{s+m}−H_s) + B·m]``;
* sum of the precisions just before its hits (``old``, Market-1501): ``(p/m)·[(c−Bs)·
  (H_{s+m−1}−H_{s−1}) + B·m]`` for ``s ≥ 1``, and ``p²/m`` for ``s = 0`` (the top position
  counts 1);
* AP: the sums over the query's groups divided by ``n`` (``"market"``: the mean of both sums);
* CMC@k, from the first group holding a positive: ``1 − C(m−p, k−s)/C(m, k−s)`` for
  ``0 < k−s ≤ m−p`` (0 below, 1 above);
* INP, from the last group holding a positive: ``E[n/(s+T+1)]`` with ``T`` the largest of ``p``
  positions drawn among ``m``, ``P(T = t) = C(t, p−1)/C(m, p)``, summed term by term.

A group of one item takes the plain formulas above, computed the same way.

:func:`evaluate_distances` is fast: it never sorts whole rows. Only the positives' tie groups
are needed, and those depend only on the gallery items not farther than the farthest positive,
so per query it selects, in one vectorised pass over a block of rows, the valid items with
distance ≤ the largest positive distance, and sorts just those (as packed ``row | distance
[| gallery index]`` 64-bit integers; a positive's group is the run of equal keys around it).
Blocks of rows bound memory. :func:`evaluate_distances_reference` is the straightforward
per-query argsort evaluator (per-position expectations, exact binomials) it is tested and
benchmarked against.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from scipy.special import gammaln

from ..data.types import JUNK_PID
from ..errors import MetricAttackError

APConvention = Literal["market", "noninterp"]
AP_CONVENTIONS: tuple[str, ...] = ("market", "noninterp")
TieRule = Literal["expected", "gallery-order"]
#: Tie rule → what it means (recorded with every result).
TIE_RULES: dict[str, str] = {
    "expected": "expectation over every order of equal distances (each equally likely)",
    "gallery-order": "equal distances ranked by gallery index (stable sort; torchreid / fast-reid parity)",
}
DEFAULT_RANKS = (1, 5, 10, 20)
# Elements of the distance matrix handled per block by the fast path (bounds temporary memory
# to a few hundred MB whatever the gallery size).
BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class RankingResult:
    """Retrieval quality of one query × gallery evaluation.

    Attributes:
        cmc: rank k → fraction of valid queries with a positive in the top k (expected, under ties).
        mAP: mean average precision over valid queries (convention ``ap_convention``).
        mINP: mean inverse negative penalty over valid queries.
        per_query_ap: ``[num_queries]`` AP per query, NaN for queries without a valid match.
        num_queries: number of queries.
        num_valid_queries: queries with at least one valid match (the averages' denominator).
        ap_convention: ``"market"`` or ``"noninterp"``.
        ties: how equal distances are ordered (a key of :data:`TIE_RULES`).
    """

    cmc: dict[int, float]
    mAP: float
    mINP: float
    per_query_ap: np.ndarray = field(repr=False)
    num_queries: int
    num_valid_queries: int
    ap_convention: str
    ties: str = "expected"

    @property
    def tie_rule(self) -> str:
        """What :attr:`ties` means, in words."""
        return TIE_RULES[self.ties]

    def to_dict(self, include_per_query: bool = False) -> dict[str, Any]:
        """JSON-able summary (per-query APs only when asked; NaN becomes ``None``)."""
        out: dict[str, Any] = {
            "cmc": {str(k): v for k, v in self.cmc.items()},
            "mAP": self.mAP,
            "mINP": self.mINP,
            "num_queries": self.num_queries,
            "num_valid_queries": self.num_valid_queries,
            "ap_convention": self.ap_convention,
            "ties": self.ties,
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


def _check_ties(ties: str) -> None:
    if ties not in TIE_RULES:
        raise MetricAttackError(f"unknown tie rule {ties!r}; expected one of {', '.join(TIE_RULES)}")


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


class _Groups(NamedTuple):
    """The tie groups that hold positives, of a block of queries, sorted by query then position.

    Each field is ``[K]`` int64: ``rows`` the query (relative to the block), ``start`` the
    group's first 0-based position ``s`` among the query's valid items, ``size`` its items
    ``m``, ``positives`` its positives ``p``, ``before`` the query's positives before it ``c``.
    """

    rows: np.ndarray
    start: np.ndarray
    size: np.ndarray
    positives: np.ndarray
    before: np.ndarray


_NO_GROUPS = _Groups(*(np.empty(0, np.int64) for _ in range(5)))


def _float_order_key(values: np.ndarray) -> np.ndarray:
    """Map float32 ``values`` to int64 in ``[0, 2³²)`` with the same order (−0.0 → 0.0)."""
    bits = (values.astype(np.float32) + np.float32(0.0)).view(np.int32)
    ordered = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))
    return ordered.astype(np.int64) + (1 << 31)


def _value_keys(values: np.ndarray, pos_vals: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Order-preserving non-negative int64 keys of ``values`` and ``pos_vals`` (equal values, equal
    keys) and their bit width: the float32 bit pattern, or a float64 value's rank among ``values``."""
    if values.dtype == np.float32:
        return _float_order_key(values), _float_order_key(pos_vals), 32
    distinct = np.unique(values + 0.0)  # + 0.0: -0.0 becomes 0.0
    return np.searchsorted(distinct, values + 0.0), np.searchsorted(distinct, pos_vals + 0.0), max(1, len(distinct).bit_length())


def _block_groups(block: np.ndarray, proto: _Protocol, start: int, ties: str) -> _Groups:
    """The positives' tie groups of queries ``start .. start+len(block)``.

    ``block [C, G]`` is float, NaN-free. Ignored items are masked with NaN in a copy; the
    *candidates* of a row are its valid items not farther than its farthest positive; only they
    are sorted, as packed ``row | value key | gallery index`` integers (the index only under
    ``"gallery-order"``, which makes every key unique); a positive's group is the run of keys
    equal to its own.
    """
    nrows, ncols = block.shape
    p0, p1 = proto.pos_start[start], proto.pos_start[start + nrows]
    if p0 == p1:
        return _NO_GROUPS
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
    row_start = np.cumsum(counts) - counts

    keys, pos_keys, value_bits = _value_keys(work.reshape(-1)[flat], pos_vals)
    col_bits = max(1, int(ncols - 1).bit_length())
    row_shift = value_bits + col_bits
    by_index = ties == "gallery-order"
    packed = (rows << row_shift) | (keys << col_bits) | (cols if by_index else 0)
    packed.sort()
    pos_packed = np.sort((pos_rows << row_shift) | (pos_keys << col_bits) | (pos_cols if by_index else 0))
    pos_rows = pos_packed >> row_shift
    lo = np.searchsorted(packed, pos_packed, side="left")
    hi = np.searchsorted(packed, pos_packed, side="right")

    first = np.flatnonzero(np.r_[True, lo[1:] != lo[:-1]])  # first positive of each group
    rows_g = pos_rows[first]
    return _Groups(
        rows=rows_g,
        start=lo[first] - row_start[rows_g],
        size=hi[first] - lo[first],
        positives=np.diff(np.r_[first, lo.size]),
        before=first - np.searchsorted(pos_rows, rows_g, side="left"),
    )


def _rows_per_block(ncols: int) -> int:
    """Rows per fast-path block: bounded by memory and by the bits left for the row in a packed key."""
    col_bits = max(1, int(ncols - 1).bit_length())
    if col_bits > 31:
        raise MetricAttackError(f"gallery of {ncols} images is too large for the fast evaluator (max 2^31)")
    return max(1, min(BLOCK_ELEMENTS // max(ncols, 1), 1 << (31 - col_bits)))


# ----------------------------------------------------------------------------- metrics of tie groups


def harmonic_numbers(count: int) -> np.ndarray:
    """``[count + 1]`` float64: ``H_0 = 0, H_1, ..., H_count``."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, count + 1))])


def group_ap_terms(groups: _Groups, ap: str, harmonic: np.ndarray) -> np.ndarray:
    """``[K]`` expected sum of AP terms (before dividing by ``n``) of each group (module docstring)."""
    s, m, p, c = (np.asarray(v, dtype=np.float64) for v in groups[1:])
    precision = (c + 1) / (s + 1)  # groups of one item: exact, as without ties
    old = np.divide(c, s, out=np.ones_like(s), where=s > 0)
    tied = groups.size > 1
    if tied.any():
        st, mt, pt, ct = s[tied], m[tied], p[tied], c[tied]
        si, mi = groups.start[tied], groups.size[tied]
        others, share = (pt - 1) / (mt - 1), pt / mt
        precision[tied] = share * ((ct + 1 - others * (st + 1)) * (harmonic[si + mi] - harmonic[si]) + others * mt)
        below = harmonic[si + mi - 1] - harmonic[np.maximum(si - 1, 0)]
        old[tied] = np.where(si == 0, share * pt, share * ((ct - others * st) * below + others * mt))
    return (old + precision) / 2 if ap == "market" else precision


def expected_inp(n: np.ndarray, start: np.ndarray, size: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """``[K]`` expected ``n / (last positive's rank + 1)`` for queries whose last positive lies in a
    group at ``start`` of ``size`` items holding ``positives`` of its ``n`` positives."""
    n = np.asarray(n, dtype=np.float64)
    out = n / (start + 1)  # groups of one item: exact, as without ties
    tied = size > 1
    if tied.any():  # P(T = t) = C(t, p−1) / C(m, p), summed once per distinct (s, m, p)
        combos, inverse = np.unique(np.stack([start[tied], size[tied], positives[tied]], axis=1), axis=0, return_inverse=True)
        s, m, p = (combos[:, i].astype(np.float64) for i in range(3))
        lengths = combos[:, 1] - combos[:, 2] + 1
        owner = np.repeat(np.arange(len(combos)), lengths)
        t = p[owner] - 1 + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
        log_choose_all = gammaln(m + 1) - gammaln(p + 1) - gammaln(m - p + 1)
        log_w = gammaln(t + 1) - gammaln(p[owner]) - gammaln(t - p[owner] + 2) - log_choose_all[owner]
        inverse_rank = np.bincount(owner, weights=np.exp(log_w) / (s[owner] + t + 1), minlength=len(combos))
        out[tied] = n[tied] * inverse_rank[inverse.reshape(-1)]
    return out


def hit_probability(start: np.ndarray, size: np.ndarray, positives: np.ndarray, k: int) -> np.ndarray:
    """``[V]`` probability that the first positive lies in the top ``k``, for queries whose first
    positive lies in a group at ``start`` of ``size`` items holding ``positives``."""
    j = k - start  # positions of the group inside the top k
    spare = size - positives
    out = (j > spare).astype(np.float64)
    partial = (j > 0) & (j <= spare)
    if partial.any():  # 1 − C(m−p, j) / C(m, j) = 1 − Π_{i<j} (m−p−i) / (m−i)
        jp, mp, sp = j[partial], size[partial], spare[partial]
        miss = np.ones(len(jp))
        for i in range(int(jp.max())):
            miss *= np.divide(sp - i, mp - i, out=np.ones(len(jp)), where=i < jp)
        out[partial] = 1.0 - miss
    return out


class _QueryStats:
    """Per-query AP, INP and first positive group, filled block by block."""

    def __init__(self, num_queries: int, num_gallery: int) -> None:
        self.ap = np.full(num_queries, np.nan)
        self.inp = np.full(num_queries, np.nan)
        self.first = np.zeros((3, num_queries), dtype=np.int64)  # start, size, positives; size 0: no match
        self.harmonic = harmonic_numbers(num_gallery)

    def add(self, start: int, groups: _Groups, ap: str) -> None:
        """Record the queries ``start + groups.rows``."""
        rows = groups.rows
        if rows.size == 0:
            return
        seg_start = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        seg_end = np.r_[seg_start[1:], rows.size] - 1
        n = np.add.reduceat(groups.positives.astype(np.float64), seg_start)
        query = start + rows[seg_start]
        self.ap[query] = np.add.reduceat(group_ap_terms(groups, ap, self.harmonic), seg_start) / n
        self.first[:, query] = np.stack([groups.start[seg_start], groups.size[seg_start], groups.positives[seg_start]])
        self.inp[query] = expected_inp(n, groups.start[seg_end], groups.size[seg_end], groups.positives[seg_end])

    def result(self, ranks: tuple[int, ...], ap: str, ties: str) -> RankingResult:
        valid = self.first[1] > 0
        start, size, positives = self.first[:, valid]
        hits = np.stack([hit_probability(start, size, positives, k) for k in ranks], axis=1)
        return _result(self.ap, self.inp, valid, hits, ranks, ap, ties)


def _result(
    ap_q: np.ndarray, inp_q: np.ndarray, valid: np.ndarray, hits: np.ndarray, ranks: tuple[int, ...], ap: str, ties: str
) -> RankingResult:
    """The averages over valid queries; ``hits [V, len(ranks)]`` P(first positive in the top k) of each."""
    nvalid = int(valid.sum())
    if nvalid == 0:
        return RankingResult({k: 0.0 for k in ranks}, 0.0, 0.0, ap_q, len(ap_q), 0, ap, ties)
    return RankingResult(
        cmc={k: float(hits[:, i].sum() / nvalid) for i, k in enumerate(ranks)},
        mAP=float(ap_q[valid].mean()),
        mINP=float(inp_q[valid].mean()),
        per_query_ap=ap_q,
        num_queries=len(ap_q),
        num_valid_queries=nvalid,
        ap_convention=ap,
        ties=ties,
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
    ties: TieRule = "expected",
) -> RankingResult:
    """Like :func:`evaluate_distances`, with the matrix given as ``(first_query_row, block [C, G])``
    pairs that cover every query exactly once, in order (e.g. computed chunk by chunk).
    """
    cmc_ranks = _check_options(ap, ranks)
    _check_ties(ties)
    return _evaluate_blocks(blocks, _Protocol(q_pids, g_pids, q_camids, g_camids), ap, cmc_ranks, ties)


def _evaluate_blocks(blocks: Iterable[tuple[int, Any]], proto: _Protocol, ap: str, cmc_ranks: tuple[int, ...], ties: str) -> RankingResult:
    stats = _QueryStats(proto.num_queries, proto.num_gallery)
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
            stats.add(start + s, _block_groups(sub, proto, start + s, ties), ap)
        covered += nrows
    if covered != proto.num_queries:
        raise MetricAttackError(f"distance blocks covered {covered} of {proto.num_queries} queries")
    return stats.result(cmc_ranks, ap, ties)


def evaluate_distances(
    dist: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    ap: APConvention = "market",
    ranks: Sequence[int] = DEFAULT_RANKS,
    ties: TieRule = "expected",
) -> RankingResult:
    """CMC, mAP and mINP of ``dist [Q, G]`` (numpy or torch; smaller = more similar).

    ``q_pids``, ``q_camids`` are ``[Q]``, ``g_pids``, ``g_camids`` ``[G]`` integers. See the
    module docstring for the protocol, AP conventions and tie rules. Example::

        >>> evaluate_distances([[0.1, 0.5]], [1], [1, 2], [0], [1, 1]).cmc[1]
        1.0
        >>> evaluate_distances([[0.5, 0.5]], [1], [1, 2], [0], [1, 1]).cmc[1]  # a tie: half the orders
        0.5
    """
    cmc_ranks = _check_options(ap, ranks)
    _check_ties(ties)
    proto = _Protocol(q_pids, g_pids, q_camids, g_camids)
    arr = _as_numpy(dist)
    if arr.shape != (proto.num_queries, proto.num_gallery):
        raise MetricAttackError(
            f"distance matrix must have shape [{proto.num_queries}, {proto.num_gallery}] (queries × gallery), got {tuple(arr.shape)}"
        )
    return _evaluate_blocks([(0, arr)], proto, ap, cmc_ranks, ties)


def evaluate_distances_reference(
    dist: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    ap: APConvention = "market",
    ranks: Sequence[int] = DEFAULT_RANKS,
    ties: TieRule = "expected",
) -> RankingResult:
    """The straightforward evaluator: per query, a stable argsort of the whole row.

    Same protocol, tie rules and result as :func:`evaluate_distances`, computed another way:
    expectations position by position (the chance of a positive at each position and the
    expected positives before it) and exact binomials (Python integers) for CMC and INP. Kept
    as the baseline the fast path is tested and benchmarked against.
    """
    cmc_ranks = _check_options(ap, ranks)
    _check_ties(ties)
    proto = _Protocol(q_pids, g_pids, q_camids, g_camids)
    arr = _as_distances(dist, proto.num_queries, proto.num_gallery)
    ap_q, inp_q = np.full(proto.num_queries, np.nan), np.full(proto.num_queries, np.nan)
    hits = np.zeros((proto.num_queries, len(cmc_ranks)))
    for q in range(proto.num_queries):
        order = np.argsort(arr[q] + 0.0, kind="stable")
        pids, cams = proto.g_pids[order], proto.g_camids[order]
        keep = (pids != JUNK_PID) & ~((pids == proto.q_pids[q]) & (cams == proto.q_camids[q]))
        matches = (pids[keep] == proto.q_pids[q]) & (proto.q_pids[q] != JUNK_PID)
        ngood = int(matches.sum())
        if ngood == 0:
            continue
        values = arr[q][order][keep] + 0.0
        new = np.ones(len(values), bool) if ties == "gallery-order" else np.r_[True, values[1:] != values[:-1]]
        group = np.cumsum(new) - 1
        size, found = np.bincount(group), np.bincount(group, weights=matches).astype(np.int64)
        first_at, before = np.flatnonzero(new), np.cumsum(found) - found
        r = np.arange(len(values))
        share = found[group] / size[group]  # P(a positive at r)
        others = np.divide(found[group] - 1, size[group] - 1, out=np.zeros(len(r)), where=size[group] > 1)
        earlier = before[group] + (r - first_at[group]) * others  # expected positives before r, given one at r
        precision = (earlier + 1) / (r + 1)
        term = (np.where(r > 0, earlier / np.maximum(r, 1), 1.0) + precision) / 2 if ap == "market" else precision
        ap_q[q] = float((share * term).sum() / ngood)
        holding = np.flatnonzero(found)
        gs, gm, gp = int(first_at[holding[0]]), int(size[holding[0]]), int(found[holding[0]])
        for i, k in enumerate(cmc_ranks):
            j = k - gs
            hits[q, i] = 0.0 if j <= 0 else 1.0 if j > gm - gp else 1.0 - math.comb(gm - gp, j) / math.comb(gm, j)
        ls, lm, lp = int(first_at[holding[-1]]), int(size[holding[-1]]), int(found[holding[-1]])
        inp_q[q] = sum(math.comb(t, lp - 1) / math.comb(lm, lp) * ngood / (ls + t + 1) for t in range(lp - 1, lm))
    valid = ~np.isnan(ap_q)
    return _result(ap_q, inp_q, valid, hits[valid], cmc_ranks, ap, ties)
