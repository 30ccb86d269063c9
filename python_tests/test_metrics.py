"""Tests for mtlkernels.metrics: hand-computed cases, brute-force references, edge cases and
input validation."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtlkernels import metrics as M


# --------------------------------------------------------------------------------------------
# Plain references (deliberately naive)
# --------------------------------------------------------------------------------------------

def pairwise_auc(scores, labels):
    """O(n+ n-) definition: fraction of (positive, negative) pairs ordered correctly, ties 1/2."""
    scores = [float(s) for s in scores]
    labels = [int(y) for y in labels]
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    if not pos or not neg:
        return math.nan
    won = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return won / (len(pos) * len(neg))


def looped_gauc(scores, labels, users, weighting):
    """Per-user Python loop; single-class users are skipped in numerator and denominator."""
    rows = {}
    for s, y, u in zip(scores.tolist(), labels.tolist(), users.tolist()):
        rows.setdefault(u, []).append((s, int(y)))
    num = den = 0.0
    kept = dropped = 0
    for user_rows in rows.values():
        s_u = [s for s, _ in user_rows]
        y_u = [y for _, y in user_rows]
        n_pos = sum(y_u)
        if n_pos == 0 or n_pos == len(y_u):
            dropped += 1
            continue
        kept += 1
        w = {"impressions": len(y_u), "positives": n_pos, "uniform": 1}[weighting]
        num += w * pairwise_auc(s_u, y_u)
        den += w
    return (num / den if den else math.nan), kept, dropped


def tied_data(n, distinct=5, pos_rate=0.3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, distinct, (n,), generator=g).to(dtype) / distinct
    labels = (torch.rand(n, generator=g) < pos_rate).long()
    return scores, labels


# --------------------------------------------------------------------------------------------
# AUC
# --------------------------------------------------------------------------------------------

def test_auc_hand_computed():
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs (0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4) -> 3/4
    assert float(M.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])) == 0.75


def test_auc_positive_negative_tie_counts_half():
    assert float(M.auc([0.5, 0.5], [0, 1])) == 0.5
    # pos {0.5, 0.9}, neg {0.5, 0.1}: (0.5 vs 0.5) = 1/2, others won -> 3.5 / 4
    assert float(M.auc([0.5, 0.9, 0.5, 0.1], [1, 1, 0, 0])) == 0.875


def test_auc_all_tied_is_half():
    assert float(M.auc(torch.full((7,), 0.3), [1, 0, 0, 1, 0, 1, 1])) == 0.5


def test_auc_perfect_and_inverted():
    assert float(M.auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])) == 1.0
    assert float(M.auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])) == 0.0


def test_auc_returns_float64_scalar_tensor():
    out = M.auc(torch.tensor([0.2, 0.7], dtype=torch.float32), torch.tensor([0, 1]))
    assert isinstance(out, torch.Tensor) and out.dim() == 0 and out.dtype == torch.float64


@pytest.mark.parametrize("n", [2, 17, 100, 513])
@pytest.mark.parametrize("distinct", [2, 4, 50])
def test_auc_matches_pairwise_reference_with_ties(n, distinct):
    scores, labels = tied_data(n, distinct=distinct, seed=n * 31 + distinct)
    labels[0], labels[1] = 0, 1  # make both classes present
    assert float(M.auc(scores, labels)) == pytest.approx(pairwise_auc(scores, labels), abs=1e-12)


def test_auc_matches_pairwise_reference_continuous_scores():
    scores = torch.randn(400, dtype=torch.float64)
    labels = (torch.rand(400) < 0.2).long()
    assert float(M.auc(scores, labels)) == pytest.approx(pairwise_auc(scores, labels), abs=1e-12)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0, 0], [True]])
def test_auc_single_class_is_nan(labels):
    assert math.isnan(float(M.auc(torch.rand(len(labels)), labels)))


def test_auc_invariant_to_strictly_increasing_transform():
    scores, labels = tied_data(300, distinct=7, seed=3)
    base = float(M.auc(scores, labels))
    for transform in (lambda s: 3 * s - 1, torch.exp, lambda s: s ** 3, torch.sigmoid,
                      lambda s: torch.log(s + 1e-3)):
        assert float(M.auc(transform(scores), labels)) == pytest.approx(base, abs=1e-15)
    # a strictly decreasing transform gives 1 - AUC
    assert float(M.auc(-scores, labels)) == pytest.approx(1 - base, abs=1e-15)


def test_auc_float32_and_float64_agree():
    scores64, labels = tied_data(1000, distinct=9, seed=4)
    scores32 = scores64.to(torch.float32)
    assert float(M.auc(scores32, labels)) == pytest.approx(float(M.auc(scores64, labels)), abs=1e-15)


def test_auc_accepts_numpy_lists_bool_and_float_labels():
    s = np.array([0.1, 0.4, 0.35, 0.8])
    expected = 0.75
    assert float(M.auc(s, np.array([0, 0, 1, 1]))) == expected
    assert float(M.auc(s.tolist(), [False, False, True, True])) == expected
    assert float(M.auc(torch.from_numpy(s), torch.tensor([0.0, 0.0, 1.0, 1.0]))) == expected
    assert float(M.auc(torch.tensor([1, 4, 3, 8]), [0, 0, 1, 1])) == expected  # integer scores


def test_auc_exact_with_infinite_scores():
    assert float(M.auc([-math.inf, 0.0, math.inf, math.inf], [0, 1, 1, 0])) == pytest.approx(
        pairwise_auc([-math.inf, 0.0, math.inf, math.inf], [0, 1, 1, 0]))


def test_auc_large_counts_stay_exact():
    # n+ n- = 2.5e11 > 2**24: float32 accumulation would lose this, int64 / float64 does not.
    scores = torch.cat([torch.ones(400_000), torch.zeros(600_000)])
    labels = torch.cat([torch.ones(300_000), torch.zeros(100_000),      # score 1: 300k pos, 100k neg
                        torch.ones(200_000), torch.zeros(400_000)]).long()  # score 0: 200k pos, 400k neg
    # pos@1 beat the 400k negatives at 0 and tie with 100k (1/2); pos@0 tie with 400k negatives
    wins = 300_000 * (400_000 + 50_000) + 200_000 * 200_000
    assert float(M.auc(scores, labels)) == wins / (500_000 * 500_000)
    assert float(M.auc(scores, labels)) == 0.7


# --------------------------------------------------------------------------------------------
# Per-user AUC, GAUC, uAUC
# --------------------------------------------------------------------------------------------

def gauc_data(n=600, n_users=40, distinct=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores, labels = tied_data(n, distinct=distinct, pos_rate=0.35, seed=seed + 1)
    # sparse, unsorted, negative and huge ids
    id_pool = torch.randperm(10_000, generator=g)[:n_users] * 7919 - 30_000
    users = id_pool[torch.randint(0, n_users, (n,), generator=g)]
    # force a few single-class users: all-negative, all-positive, and a one-row user
    users[:5], labels[:5] = 123_456_789, 0
    users[5:9], labels[5:9] = -987_654_321, 1
    users[9] = 2**40
    return scores, labels, users


def test_gauc_hand_computed_with_single_class_user():
    scores = [0.1, 0.4, 0.35, 0.8, 0.3, 0.2, 0.5, 0.6]
    labels = [0, 0, 1, 1, 1, 0, 1, 1]
    users = [5, 5, 5, 5, 2, 2, 9, 9]  # user 5: AUC 3/4 (4 rows, 2 pos); user 2: AUC 1; user 9: all pos
    imp = M.gauc(scores, labels, users)
    assert float(imp.value) == pytest.approx((4 * 0.75 + 2 * 1.0) / 6)
    assert (imp.users_kept, imp.users_dropped) == (2, 1)
    assert float(M.gauc(scores, labels, users, weighting="positives").value) == pytest.approx(
        (2 * 0.75 + 1 * 1.0) / 3)
    assert float(M.uauc(scores, labels, users).value) == pytest.approx((0.75 + 1.0) / 2)


@pytest.mark.parametrize("weighting", ["impressions", "positives", "uniform"])
@pytest.mark.parametrize("seed,n,n_users,distinct", [(0, 600, 40, 4), (1, 2000, 300, 3),
                                                     (2, 257, 9, 50), (3, 1500, 700, 2)])
def test_gauc_matches_per_user_loop(weighting, seed, n, n_users, distinct):
    scores, labels, users = gauc_data(n, n_users, distinct, seed)
    expected, kept, dropped = looped_gauc(scores, labels, users, weighting)
    got = M.gauc(scores, labels, users, weighting=weighting)
    assert float(got.value) == pytest.approx(expected, abs=1e-12)
    assert (got.users_kept, got.users_dropped) == (kept, dropped)
    assert dropped >= 3  # the forced single-class users
    assert M.gauc_of(M.per_user_auc(scores, labels, users), weighting) == got  # one sort, any weighting


def test_gauc_single_class_users_excluded_from_both_sums():
    # Adding single-class users (any size) must not move GAUC at all.
    scores, labels, users = gauc_data(800, 30, 5, seed=7)
    users = users[10:]; scores = scores[10:]; labels = labels[10:]
    base = M.gauc(scores, labels, users)
    extra_users = torch.tensor([10**9] * 50 + [10**9 + 1] * 20)
    extra_labels = torch.tensor([0] * 50 + [1] * 20)
    extra_scores = torch.rand(70, dtype=torch.float64)
    more = M.gauc(torch.cat([scores, extra_scores]), torch.cat([labels, extra_labels]),
                  torch.cat([users, extra_users]))
    assert float(more.value) == pytest.approx(float(base.value), abs=1e-15)
    assert more.users_kept == base.users_kept
    assert more.users_dropped == base.users_dropped + 2


def test_uauc_is_uniform_gauc_and_mean_of_per_user():
    scores, labels, users = gauc_data(1000, 50, 6, seed=11)
    per_user = M.per_user_auc(scores, labels, users)
    finite = ~torch.isnan(per_user.auc)
    assert float(M.uauc(scores, labels, users).value) == pytest.approx(
        float(per_user.auc[finite].mean()), abs=1e-15)
    assert M.uauc(scores, labels, users) == M.gauc(scores, labels, users, weighting="uniform")


def test_per_user_auc_matches_pairwise_per_user():
    scores, labels, users = gauc_data(500, 20, 3, seed=5)
    out = M.per_user_auc(scores, labels, users)
    assert torch.equal(out.users, torch.unique(users))
    for u, a, p, q in zip(out.users.tolist(), out.auc.tolist(), out.n_pos.tolist(), out.n_neg.tolist()):
        mask = users == u
        ref = pairwise_auc(scores[mask], labels[mask])
        assert (math.isnan(a) and math.isnan(ref)) or a == pytest.approx(ref, abs=1e-12)
        assert (p, q) == (int(labels[mask].sum()), int((labels[mask] == 0).sum()))


def test_gauc_row_order_does_not_matter():
    scores, labels, users = gauc_data(700, 25, 4, seed=9)
    perm = torch.randperm(700)
    for w in M.GAUC_WEIGHTINGS:
        a = M.gauc(scores, labels, users, weighting=w)
        b = M.gauc(scores[perm], labels[perm], users[perm], weighting=w)
        assert float(a.value) == pytest.approx(float(b.value), abs=1e-15)


def test_gauc_single_user_equals_auc():
    scores, labels = tied_data(300, distinct=6, seed=12)
    users = torch.full((300,), 42)
    for w in M.GAUC_WEIGHTINGS:
        assert float(M.gauc(scores, labels, users, weighting=w).value) == pytest.approx(
            float(M.auc(scores, labels)), abs=1e-15)


def test_gauc_no_eligible_user_is_nan():
    out = M.gauc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1], [1, 1, 2, 2])
    assert math.isnan(float(out.value))
    assert (out.users_kept, out.users_dropped) == (0, 2)
    out = M.uauc([0.1, 0.2, 0.3], [1, 1, 1], [7, 8, 9])
    assert math.isnan(float(out.value)) and (out.users_kept, out.users_dropped) == (0, 3)


def test_gauc_positives_weighting_equals_impressions_when_each_user_has_one_positive_per_row():
    # Sanity of the weight plumbing: with every user having the same size and same positive
    # count, all three weightings coincide.
    users = torch.arange(30).repeat_interleave(4)
    labels = torch.tensor([0, 1, 0, 1]).repeat(30)
    scores = torch.rand(120, dtype=torch.float64).round(decimals=1)
    values = [float(M.gauc(scores, labels, users, weighting=w).value) for w in M.GAUC_WEIGHTINGS]
    assert values[0] == pytest.approx(values[1], abs=1e-15)
    assert values[0] == pytest.approx(values[2], abs=1e-15)


def test_gauc_float32_and_float64_agree():
    scores, labels, users = gauc_data(900, 60, 8, seed=13)
    for w in M.GAUC_WEIGHTINGS:
        a = M.gauc(scores.float(), labels, users, weighting=w)
        b = M.gauc(scores, labels, users, weighting=w)
        assert float(a.value) == pytest.approx(float(b.value), abs=1e-15)


def test_gauc_bad_weighting():
    with pytest.raises(ValueError, match="weighting"):
        M.gauc([0.1, 0.2], [0, 1], [1, 1], weighting="clicks")


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------

def test_calibration_overall_and_buckets_vs_reference():
    g = torch.Generator().manual_seed(21)
    probs = torch.rand(1000, generator=g, dtype=torch.float64)
    labels = (torch.rand(1000, generator=g, dtype=torch.float64) < probs * 0.8).long()
    buckets = torch.tensor([-3, 10, 4, 99])[torch.randint(0, 4, (1000,), generator=g)]
    out = M.calibration(probs, labels, buckets)
    assert float(out.ratio) == pytest.approx(probs.sum().item() / labels.sum().item(), rel=1e-13)
    assert out.bucket_ids.tolist() == [-3, 4, 10, 99]
    for b, r, size in zip(out.bucket_ids.tolist(), out.bucket_ratios.tolist(), out.bucket_sizes.tolist()):
        mask = buckets == b
        assert r == pytest.approx(sum(probs[mask].tolist()) / sum(labels[mask].tolist()), rel=1e-13)
        assert size == int(mask.sum())


def test_calibration_hand_computed():
    out = M.calibration([0.2, 0.6, 0.1, 0.5], [1, 0, 0, 1])
    assert float(out.ratio) == pytest.approx(1.4 / 2)
    assert out.bucket_ids is None and out.bucket_ratios is None


def test_calibration_zero_positives_is_inf_or_nan():
    assert float(M.calibration([0.2, 0.3], [0, 0]).ratio) == math.inf
    assert math.isnan(float(M.calibration([0.0, 0.0], [0, 0]).ratio))
    out = M.calibration([0.2, 0.3, 0.0, 0.4], [0, 1, 0, 0], buckets=[1, 1, 2, 3])
    assert out.bucket_ids.tolist() == [1, 2, 3]
    r = out.bucket_ratios.tolist()
    assert r[0] == pytest.approx(0.5) and math.isnan(r[1]) and r[2] == math.inf


def test_calibration_with_quantile_buckets():
    probs = torch.rand(1000, dtype=torch.float64)
    labels = (torch.rand(1000, dtype=torch.float64) < probs).long()
    b = M.quantile_buckets(probs, 10)
    assert b.min() >= 0 and b.max() <= 9
    assert torch.bincount(b, minlength=10).tolist() == [100] * 10
    # buckets follow the score order
    order = torch.argsort(probs)
    assert bool((torch.diff(b[order]) >= 0).all())
    out = M.calibration(probs, labels, buckets=b)
    assert out.bucket_ids.tolist() == list(range(10))


def test_quantile_buckets_edges_match_torch_quantile():
    scores = torch.randn(777, dtype=torch.float64)
    for k in (2, 5, 13):
        edges = torch.quantile(scores, torch.linspace(0, 1, k + 1, dtype=torch.float64)[1:-1])
        assert torch.equal(M.quantile_buckets(scores, k), torch.bucketize(scores, edges, right=True))
    assert M.quantile_buckets(scores, 1).eq(0).all()


def test_quantile_buckets_keep_ties_together():
    scores = torch.tensor([0.5] * 6 + [0.1, 0.9])
    b = M.quantile_buckets(scores, 4)
    assert len(set(b[:6].tolist())) == 1


# --------------------------------------------------------------------------------------------
# Log loss
# --------------------------------------------------------------------------------------------

def test_logloss_probs_vs_torch_bce():
    probs = torch.rand(500, dtype=torch.float64) * 0.98 + 0.01
    labels = (torch.rand(500) < 0.4).double()
    expected = F.binary_cross_entropy(probs, labels)
    assert float(M.logloss(probs, labels)) == pytest.approx(float(expected), rel=1e-12)
    assert float(M.logloss(probs.float(), labels.long())) == pytest.approx(float(expected), rel=1e-6)


def test_logloss_logits_vs_probs_and_torch():
    logits = torch.randn(500, dtype=torch.float64) * 4
    labels = (torch.rand(500) < 0.4).long()
    from_logits = float(M.logloss(labels=labels, logits=logits))
    from_probs = float(M.logloss(torch.sigmoid(logits), labels))
    assert from_logits == pytest.approx(from_probs, rel=1e-10)
    assert from_logits == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits, labels.double())), rel=1e-12)


def test_logloss_extreme_logits_finite_and_exact():
    labels = torch.tensor([1, 0, 0, 1])
    logits = torch.tensor([100.0, -100.0, 100.0, -100.0])
    out = float(M.logloss(labels=labels, logits=logits))
    assert math.isfinite(out)
    assert out == pytest.approx((2 * 100.0) / 4, rel=1e-12)  # two confident mistakes cost ~100 each
    assert float(M.logloss(labels=[1, 0], logits=[100.0, -100.0])) == pytest.approx(0.0, abs=1e-40)


def test_logloss_probs_clipped_with_eps():
    # a certain mistake costs -log(eps) instead of inf (1 - eps is rounded in float64)
    assert float(M.logloss([0.0], [1])) == pytest.approx(-math.log(1e-15), rel=1e-14)
    assert float(M.logloss([1.0], [0])) == pytest.approx(-math.log1p(-(1 - 1e-15)), rel=1e-14)
    assert float(M.logloss([0.0, 1.0], [1, 0], eps=1e-7)) == pytest.approx(-math.log(1e-7), rel=1e-8)
    # a certain hit costs about eps
    assert float(M.logloss([1.0, 0.0], [1, 0])) == pytest.approx(1e-15, rel=0.2)


def test_logloss_argument_errors():
    with pytest.raises(TypeError, match="exactly one of probs or logits"):
        M.logloss([0.5], [1], logits=[0.0])
    with pytest.raises(TypeError, match="exactly one of probs or logits"):
        M.logloss(labels=[1])
    with pytest.raises(TypeError, match="labels"):
        M.logloss([0.5])
    with pytest.raises(ValueError, match="logits"):
        M.logloss(labels=[1, 0], logits=[math.inf, 0.0])
    with pytest.raises(ValueError, match="probs"):
        M.logloss([1.5, 0.2], [1, 0])
    with pytest.raises(ValueError, match="eps"):
        M.logloss([0.5], [1], eps=0.0)


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call,exc,name", [
    (lambda: M.auc(torch.rand(3, 2), torch.ones(3)), ValueError, "scores"),
    (lambda: M.auc(torch.rand(3), torch.ones(4)), ValueError, "labels"),
    (lambda: M.auc(torch.rand(3), torch.ones(3, 1)), ValueError, "labels"),
    (lambda: M.auc([], []), ValueError, "scores"),
    (lambda: M.auc(torch.tensor(0.5), torch.tensor(1)), ValueError, "scores"),
    (lambda: M.auc([0.1, 0.2, 0.3], [0, 2, 1]), ValueError, "labels"),
    (lambda: M.auc([0.1, 0.2], [0.5, 1.0]), ValueError, "labels"),
    (lambda: M.auc([0.1, 0.2], [math.nan, 1.0]), ValueError, "labels"),
    (lambda: M.auc([0.1, math.nan, 0.3], [0, 1, 1]), ValueError, "scores"),
    (lambda: M.auc(["a", "b"], [0, 1]), TypeError, "scores"),
    (lambda: M.auc(torch.tensor([1 + 1j, 2j]), [0, 1]), TypeError, "scores"),
    (lambda: M.gauc([0.1, 0.2], [0, 1], [1.0, 2.0]), TypeError, "users"),
    (lambda: M.gauc([0.1, 0.2], [0, 1], [1, 2, 3]), ValueError, "users"),
    (lambda: M.gauc([0.1, math.nan], [0, 1], [1, 1]), ValueError, "scores"),
    (lambda: M.uauc([0.1, 0.2], [0, 3], [1, 1]), ValueError, "labels"),
    (lambda: M.calibration([0.1, 0.2], [0, 1], buckets=[0.5, 1.5]), TypeError, "buckets"),
    (lambda: M.calibration([0.1, 0.2], [0, 1], buckets=[1]), ValueError, "buckets"),
    (lambda: M.calibration([0.1, -0.2], [0, 1]), ValueError, "probs"),
    (lambda: M.calibration([0.1, math.nan], [0, 1]), ValueError, "probs"),
    (lambda: M.calibration([0.1, 0.2], [0, 1, 1]), ValueError, "labels"),
    (lambda: M.logloss([0.1, 0.2], [[0, 1]]), ValueError, "labels"),
    (lambda: M.logloss(labels=[0, 1], logits=[math.nan, 1.0]), ValueError, "logits"),
    (lambda: M.quantile_buckets([0.1, 0.2], 0), ValueError, "num_buckets"),
])
def test_bad_inputs_raise_naming_the_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call()
