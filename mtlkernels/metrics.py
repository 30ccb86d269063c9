"""Ranking and calibration metrics for recommender evaluation: AUC, GAUC / uAUC, calibration
ratio (PCOC) and log loss.

Conventions shared by every function here
-----------------------------------------
* Inputs are 1-D and of equal length. Tensors, numpy arrays and lists are accepted; anything
  that is not a tensor is converted and placed on the device of the first tensor argument.
* ``labels`` must be binary: bool, or a numeric dtype holding only 0 and 1.
* Scores must not contain NaN (``+-inf`` is fine for ranking metrics); probabilities must lie
  in ``[0, 1]``; user / bucket ids must have an integer dtype (any values, any order).
* Bad input raises ``TypeError`` (wrong kind / dtype) or ``ValueError`` (wrong shape, length,
  values, or empty), and the message starts with the offending argument's name.
* Everything is computed with whole-tensor torch ops (sorts, cumulative sums, segment
  reductions): no Python loop over rows, users or buckets, so the same code runs on CPU and
  CUDA. Counts are kept in int64 and ratios in float64 (``n+ * n-`` exceeds 2**24 quickly).
* Metric values are returned as 0-dim float64 tensors on the inputs' device (``float(x)``
  to get a Python number). Undefined values are NaN, never an exception.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

__all__ = [
    "auc",
    "gauc",
    "gauc_of",
    "uauc",
    "per_user_auc",
    "calibration",
    "quantile_buckets",
    "logloss",
    "PerUserAUC",
    "GAUCResult",
    "CalibrationResult",
]

GAUC_WEIGHTINGS = ("impressions", "positives", "uniform")


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------

def _as_1d(x, name: str, device: Optional[torch.device] = None) -> Tensor:
    """``x`` as a non-empty 1-D tensor; non-tensors are converted and placed on ``device``."""
    if isinstance(x, Tensor):
        t = x
        if device is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")
    else:
        try:
            t = torch.as_tensor(x, device=device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a 1-D tensor, numpy array or list of numbers; "
                            f"could not convert {type(x).__name__}: {err}") from None
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    if t.is_complex():
        raise TypeError(f"{name} must be real-valued, got dtype {t.dtype}")
    return t


def _check_length(t: Tensor, name: str, n: int, ref_name: str) -> None:
    if t.numel() != n:
        raise ValueError(f"{name} has length {t.numel()} but {ref_name} has length {n}")


def _scores(x, name: str) -> Tensor:
    """Real-valued ranking scores without NaN (bool scores rank as 0/1)."""
    t = _as_1d(x, name)
    if t.dtype == torch.bool:
        t = t.to(torch.int8)
    if t.is_floating_point() and bool(torch.isnan(t).any()):
        raise ValueError(f"{name} contains NaN")
    return t


def _labels(x, name: str, device: torch.device, n: int, ref_name: str) -> Tensor:
    """Binary labels as int64 0/1."""
    t = _as_1d(x, name, device)
    _check_length(t, name, n, ref_name)
    if t.dtype != torch.bool:
        if not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"{name} must be binary (only 0 and 1, or bool)")
    return t.to(torch.int64)


def _ids(x, name: str, device: torch.device, n: int, ref_name: str) -> Tensor:
    """Integer group ids (users, buckets); any values, any order."""
    t = _as_1d(x, name, device)
    _check_length(t, name, n, ref_name)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {t.dtype}")
    return t


def _probs(x, name: str) -> Tensor:
    """Probabilities in [0, 1] as float64."""
    t = _as_1d(x, name)
    t = t.to(torch.float64)
    if bool(torch.isnan(t).any()):
        raise ValueError(f"{name} contains NaN")
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(f"{name} must lie in [0, 1]")
    return t


# --------------------------------------------------------------------------------------------
# Tie-aware Mann-Whitney core
# --------------------------------------------------------------------------------------------

def _segment_starts(keys: Tensor) -> Tensor:
    """Boolean mask, True at the first row of each run of equal consecutive ``keys``."""
    starts = torch.ones(keys.numel(), dtype=torch.bool, device=keys.device)
    starts[1:] = keys[1:] != keys[:-1]
    return starts


def _mann_whitney_counts(sorted_scores: Tensor, sorted_labels: Tensor, segment_start: Tensor):
    """Per-segment ``(n, n_pos, twice_rank_sum)`` for rows sorted by (segment, score).

    ``segment_start`` marks the first row of each segment (a user, or the whole input).
    Within a segment, rows are ranked 1..n by ascending score, and a run of tied scores
    (a tie group) shares the average of its ranks: a group starting at 0-based in-segment
    offset ``a`` with ``c`` rows has average rank ``a + (c + 1) / 2``. The returned
    ``twice_rank_sum`` is twice the sum of those ranks over the positives,
    ``sum_g pos_g * (2 a_g + c_g + 1)``, which is an integer, so all of it stays exact in int64.
    """
    n_rows = sorted_scores.numel()
    device = sorted_scores.device
    row = torch.arange(n_rows, device=device)

    seg_of_row = torch.cumsum(segment_start, 0) - 1
    seg_first_row = row[segment_start]
    n_seg = seg_first_row.numel()

    group_start = segment_start.clone()
    group_start[1:] |= sorted_scores[1:] != sorted_scores[:-1]
    group_of_row = torch.cumsum(group_start, 0) - 1
    group_first_row = row[group_start]
    n_groups = group_first_row.numel()

    group_size = torch.diff(group_first_row, append=group_first_row.new_tensor([n_rows]))
    group_pos = torch.zeros(n_groups, dtype=torch.int64, device=device).index_add_(
        0, group_of_row, sorted_labels)
    group_seg = seg_of_row[group_first_row]
    offset_in_seg = group_first_row - seg_first_row[group_seg]
    twice_rank = group_pos * (2 * offset_in_seg + group_size + 1)

    seg_size = torch.diff(seg_first_row, append=seg_first_row.new_tensor([n_rows]))
    seg_pos = torch.zeros(n_seg, dtype=torch.int64, device=device).index_add_(
        0, seg_of_row, sorted_labels)
    seg_twice_rank_sum = torch.zeros(n_seg, dtype=torch.int64, device=device).index_add_(
        0, group_seg, twice_rank)
    return seg_size, seg_pos, seg_twice_rank_sum


def _auc_from_counts(n: Tensor, n_pos: Tensor, twice_rank_sum: Tensor) -> Tensor:
    """Mann-Whitney AUC per segment in float64; NaN where a class is missing.

    ``U = R+ - n+ (n+ + 1) / 2`` and ``AUC = U / (n+ n-)``, evaluated as
    ``(2 R+ - n+ (n+ + 1)) / (2 n+ n-)`` with the numerator exact in int64.
    """
    n_neg = n - n_pos
    twice_u = (twice_rank_sum - n_pos * (n_pos + 1)).to(torch.float64)
    denom = (2 * n_pos * n_neg).to(torch.float64)
    value = twice_u / denom.clamp_min(1.0)
    return torch.where((n_pos > 0) & (n_neg > 0), value, torch.full_like(value, float("nan")))


# --------------------------------------------------------------------------------------------
# AUC, per-user AUC, GAUC, uAUC
# --------------------------------------------------------------------------------------------

def auc(scores, labels) -> Tensor:
    """Area under the ROC curve: P(score of a random positive > score of a random negative),
    a positive and a negative with equal scores counting 1/2.

    Computed exactly, ties included, as the Mann-Whitney statistic with average ranks: rank
    all rows by ascending score (tied rows share the mean of their ranks), let ``R+`` be the
    sum of the positives' ranks, then ``AUC = (R+ - n+ (n+ + 1) / 2) / (n+ n-)``. One sort,
    O(N log N); counts in int64, the ratio in float64. Invariant to any strictly increasing
    transform of ``scores``; all-tied scores give exactly 0.5.

    Returns a 0-dim float64 tensor; NaN when there is no positive or no negative (AUC is
    undefined there).
    """
    scores = _scores(scores, "scores")
    labels = _labels(labels, "labels", scores.device, scores.numel(), "scores")
    sorted_scores, order = torch.sort(scores)
    whole = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    whole[0] = True
    counts = _mann_whitney_counts(sorted_scores, labels[order], whole)
    return _auc_from_counts(*counts)[0]


class PerUserAUC(NamedTuple):
    """Per-user AUC, users in ascending id order.

    ``auc[i]`` is NaN for a user with only positives or only negatives.
    """
    users: Tensor      # distinct user ids, ascending
    auc: Tensor        # float64, NaN for single-class users
    n_pos: Tensor      # int64 positives per user
    n_neg: Tensor      # int64 negatives per user


def per_user_auc(scores, labels, users) -> PerUserAUC:
    """AUC of every user (same definition and tie handling as :func:`auc`), vectorised.

    Rows are sorted once by (user, score) -- a sort by score followed by a stable sort by
    user -- so each user's rows form a contiguous segment ordered by score. Tie groups are
    the runs of equal (user, score); their average in-user ranks and the per-user sums of
    the positives' ranks come from cumulative sums and ``index_add_`` segment reductions,
    then the Mann-Whitney formula is applied to every user at once. O(N log N), no Python
    loop over users. User ids may be any integers, unsorted and non-contiguous.
    """
    scores = _scores(scores, "scores")
    n = scores.numel()
    labels = _labels(labels, "labels", scores.device, n, "scores")
    users = _ids(users, "users", scores.device, n, "scores")

    by_score = torch.argsort(scores)
    by_user_then_score = by_score[torch.sort(users[by_score], stable=True).indices]
    sorted_users = users[by_user_then_score]
    user_start = _segment_starts(sorted_users)
    n_rows, n_pos, twice_rank_sum = _mann_whitney_counts(
        scores[by_user_then_score], labels[by_user_then_score], user_start)
    return PerUserAUC(users=sorted_users[user_start],
                      auc=_auc_from_counts(n_rows, n_pos, twice_rank_sum),
                      n_pos=n_pos, n_neg=n_rows - n_pos)


class GAUCResult(NamedTuple):
    """Result of :func:`gauc` / :func:`uauc`.

    ``value`` is a 0-dim float64 tensor (NaN when no user has both classes);
    ``users_kept`` counts users with both classes (those that enter the average),
    ``users_dropped`` users with a single class (excluded from numerator and denominator).
    """
    value: Tensor
    users_kept: int
    users_dropped: int


def gauc(scores, labels, users, weighting: str = "impressions") -> GAUCResult:
    """Group AUC: weighted mean of per-user AUCs,
    ``GAUC = sum_u w_u AUC_u / sum_u w_u`` over the users u that have at least one positive
    AND one negative.

    ``weighting`` chooses ``w_u``:

    * ``"impressions"`` -- the user's number of rows (the Taobao / DIN GAUC);
    * ``"positives"`` -- the user's number of positive rows (RecBole's GAUC);
    * ``"uniform"`` -- 1 for every user (uAUC, the user-averaged AUC).

    Users whose rows are all positive or all negative have no AUC and are excluded from
    both the numerator and the denominator (unlike the DIN/DIEN ``calc_gauc`` copies that
    keep their weight in the denominator); how many were kept and dropped is reported.
    ``AUC_u`` is tie-exact as in :func:`auc`. Vectorised over users (see
    :func:`per_user_auc`). Returns a :class:`GAUCResult`; ``value`` is NaN when no user is
    eligible. Reading the two counts synchronises once with the device.
    """
    if weighting not in GAUC_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {GAUC_WEIGHTINGS}, got {weighting!r}")
    return gauc_of(per_user_auc(scores, labels, users), weighting)


def gauc_of(per_user: PerUserAUC, weighting: str = "impressions") -> GAUCResult:
    """:func:`gauc` from per-user AUCs already computed (one :func:`per_user_auc` serves every
    weighting)."""
    if weighting not in GAUC_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {GAUC_WEIGHTINGS}, got {weighting!r}")
    eligible = (per_user.n_pos > 0) & (per_user.n_neg > 0)
    if weighting == "impressions":
        weight = (per_user.n_pos + per_user.n_neg).to(torch.float64)
    elif weighting == "positives":
        weight = per_user.n_pos.to(torch.float64)
    else:
        weight = torch.ones_like(per_user.auc)
    weight = torch.where(eligible, weight, torch.zeros_like(weight))
    weighted_sum = (weight * torch.nan_to_num(per_user.auc, nan=0.0)).sum()
    total_weight = weight.sum()
    value = torch.where(total_weight > 0, weighted_sum / total_weight.clamp_min(1.0),
                        torch.full_like(total_weight, float("nan")))
    kept = int(eligible.sum())
    return GAUCResult(value=value, users_kept=kept, users_dropped=per_user.users.numel() - kept)


def uauc(scores, labels, users) -> GAUCResult:
    """User-averaged AUC: ``gauc(scores, labels, users, weighting="uniform")``, i.e. the
    unweighted mean of ``AUC_u`` over users having both classes (single-class users are
    dropped and counted in ``users_dropped``; NaN when none is eligible)."""
    return gauc(scores, labels, users, weighting="uniform")


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------

class CalibrationResult(NamedTuple):
    """Result of :func:`calibration`.

    ``ratio`` is the overall ``sum(p) / sum(y)`` (0-dim float64). The bucket fields are
    ``None`` unless ``buckets`` was given; then ``bucket_ids`` holds the distinct bucket ids
    (ascending), and ``bucket_ratios`` / ``bucket_sizes`` the ratio and row count of each.
    """
    ratio: Tensor
    bucket_ids: Optional[Tensor] = None
    bucket_ratios: Optional[Tensor] = None
    bucket_sizes: Optional[Tensor] = None


def _ratio(pred_sum: Tensor, label_sum: Tensor) -> Tensor:
    """``pred_sum / label_sum`` in float64 with IEEE semantics where ``label_sum == 0``:
    +inf if ``pred_sum > 0``, NaN if ``pred_sum == 0``."""
    return pred_sum.to(torch.float64) / label_sum.to(torch.float64)


def calibration(probs, labels, buckets=None) -> CalibrationResult:
    """Calibration ratio (PCOC, predicted over observed): ``sum_i p_i / sum_i y_i``.

    1 is ideal, > 1 means over-prediction. Sums are accumulated in float64.
    When ``sum(y) == 0`` the ratio is undefined and is returned as ``+inf`` if
    ``sum(p) > 0`` and ``NaN`` if ``sum(p) == 0`` too (IEEE division; never an exception).

    ``buckets`` (optional) is an integer column of the same length -- a category, a slice, a
    user id, or score-quantile buckets from :func:`quantile_buckets` -- and the same ratio
    (with the same zero rule) is returned for every distinct bucket id, computed with one
    ``unique`` and two ``index_add_`` reductions.
    """
    probs = _probs(probs, "probs")
    n = probs.numel()
    labels = _labels(labels, "labels", probs.device, n, "probs").to(torch.float64)
    overall = _ratio(probs.sum(), labels.sum())
    if buckets is None:
        return CalibrationResult(ratio=overall)
    buckets = _ids(buckets, "buckets", probs.device, n, "probs")
    bucket_ids, bucket_of_row, bucket_sizes = torch.unique(
        buckets, sorted=True, return_inverse=True, return_counts=True)
    zeros = torch.zeros(bucket_ids.numel(), dtype=torch.float64, device=probs.device)
    pred_sum = zeros.index_add(0, bucket_of_row, probs)
    label_sum = zeros.index_add(0, bucket_of_row, labels)
    return CalibrationResult(ratio=overall, bucket_ids=bucket_ids,
                             bucket_ratios=_ratio(pred_sum, label_sum), bucket_sizes=bucket_sizes)


def quantile_buckets(scores, num_buckets: int) -> Tensor:
    """Integer bucket index in ``[0, num_buckets)`` per row by quantile of ``scores``:
    bucket ``k`` holds the scores between the ``k/num_buckets`` and ``(k+1)/num_buckets``
    quantiles (linear interpolation). Equal scores always share a bucket, so with heavy
    ties some buckets can be empty or larger than ``N / num_buckets``. For bucketed
    calibration: ``calibration(p, y, buckets=quantile_buckets(p, 10))``.
    """
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets < 1:
        raise ValueError(f"num_buckets must be a positive int, got {num_buckets!r}")
    scores = _scores(scores, "scores").to(torch.float64)
    # interior quantile edges by linear interpolation between order statistics (what
    # torch.quantile does, without its 2**24-element input limit)
    ordered = torch.sort(scores).values
    levels = torch.linspace(0, 1, num_buckets + 1, dtype=torch.float64, device=scores.device)[1:-1]
    position = levels * (scores.numel() - 1)
    below = position.floor().long()
    above = position.ceil().long()
    edges = torch.lerp(ordered[below], ordered[above], position - below)
    return torch.bucketize(scores, edges, right=True)


# --------------------------------------------------------------------------------------------
# Log loss
# --------------------------------------------------------------------------------------------

def logloss(probs=None, labels=None, *, logits=None, eps: float = 1e-15) -> Tensor:
    """Mean binary cross-entropy
    ``LogLoss = -(1/N) sum_i [ y_i log p_i + (1 - y_i) log(1 - p_i) ]``, in float64.

    Give exactly one of ``probs`` or ``logits`` (``labels`` is required):

    * ``probs`` in ``[0, 1]`` are clipped to ``[eps, 1 - eps]`` first (RecBole's ``eps =
      1e-15``), so a confident mistake costs ``-log(eps)`` (about 34.5) instead of inf;
    * ``logits`` ``z`` (finite) use the numerically stable softplus form
      ``softplus(z) - y z = max(z, 0) - y z + log1p(exp(-|z|))`` without clipping, so
      extreme logits (e.g. +-100) give exact, finite losses.

    Returns a 0-dim float64 tensor.
    """
    if labels is None:
        raise TypeError("labels is required")
    if (probs is None) == (logits is None):
        raise TypeError("give exactly one of probs or logits")
    if probs is not None:
        if not 0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
        p = _probs(probs, "probs").clamp(eps, 1 - eps)
        y = _labels(labels, "labels", p.device, p.numel(), "probs").to(torch.float64)
        losses = -(y * torch.log(p) + (1 - y) * torch.log1p(-p))
    else:
        z = _as_1d(logits, "logits").to(torch.float64)
        if not bool(torch.isfinite(z).all()):
            raise ValueError("logits must be finite (no NaN or inf)")
        y = _labels(labels, "labels", z.device, z.numel(), "logits").to(torch.float64)
        losses = z.clamp_min(0) - y * z + torch.log1p(torch.exp(-z.abs()))
    return losses.mean()
