"""Bayes maths of the synthetic generator: per-modality log-likelihood ratios and accuracy ceilings.

Every modality m carries one bit b_m in {0, 1}; given b_m, its input depends on nothing else, and a
scalar log-likelihood ratio ``lambda_m = log p(x_m | b_m=1) / p(x_m | b_m=0)`` is a sufficient statistic
for b_m (hence for y given x_m). Both signal kinds use unit-variance Gaussian noise and amplitude ``a``:

- linear:  t = a*s + e, s = 2b - 1.  lambda = 2 a t.  Bit accuracy Phi(a).
- product: u = a*r1 + e1, v = a*r2 + e2 with r1 r2 = s, r1 = +-1 uniform (the bit is the sign of the
           product of two coordinates).  lambda = logcosh(a(u+v)) - logcosh(a(u-v)); the Bayes rule is
           sign(u v).  Bit accuracy q^2 + (1-q)^2 with q = Phi(a).

The information type decides how y relates to the bits (see ``joint_prior``). Ceilings:

- unimodal (exact): rho_m * acc_m + (1 - rho_m) / 2, rho_m = p(unique_m) + p(redundant): on the other
  types b_m is independent of y, and x_m cannot tell the types apart.
- full fusion (Monte Carlo of the exact posterior): E[max_y p(y | x)], p(y | x) from the enumerated joint
  prior over (y, b) times the per-modality likelihood ratios; Rao-Blackwellised, standard error <= 1e-3.
- ensemble (Monte Carlo, exact rule): the accuracy of sign(sum_m logit p(y=1 | x_m) - (M-1) logit p(y=1)),
  the product of the unimodal Bayes posteriors, i.e. what an ensemble of perfect unimodal models predicts
  (summing their logits). Bayes-optimal exactly when the modalities are independent given y; below full
  fusion whenever they depend on each other given y (synergy).
- late fusion (Monte Carlo + search): the best accuracy of an *additive* rule sign(c + sum_m g_m(x_m)),
  which is what late fusion (summed per-modality logits) can express. Each g_m only needs lambda_m, so
  g_m is piecewise constant on 32 quantile bins of lambda_m and the bin values are chosen by exact
  coordinate ascent on the Rao-Blackwellised accuracy, started from the cross-entropy optimum and from
  naive Bayes (sum of LLRs); the unimodal Bayes rules stay candidates. Evaluated on a fresh sample. It is
  a search, so a (tight) lower bound of the true additive optimum.

Interaction channels (``xor_accs``): optionally, modalities carry a second bit c_m in one more linear
coordinate, with c_1 xor ... xor c_M = y on every sample (whatever the information type). Given y they
are independent of everything else, so the full posterior multiplies in p(y | channels); no single
modality learns anything from its own channel, so the unimodal and ensemble ceilings ignore them, and
an additive rule can use them only through AND/OR-like approximations (the late search then bins each
modality on a 2-D grid of its two LLRs). The modalities then depend on each other given y on every sample.

Binary labels make XOR special but not hopeless for additive rules: thresholding a sum can realise every
Boolean function of two bits except XOR/XNOR, and AND/OR agree with XOR on 3 of 4 bit patterns. So an
additive model scores about 75% (less with noise) on noiseless 2-bit synergy samples, and late fusion
loses to full fusion only where synergy dominates the Bayes rule: for M = 2 the Bayes rule on the bits is
XOR only when p_synergy > p_unique0 + p_unique1 + 2 p_redundant (otherwise it is OR/AND-like and additive).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.special import ndtr, ndtri

__all__ = ["amplitude", "bit_accuracy", "llr", "joint_prior", "posterior_y1", "marginal_prior", "ensemble_logit",
           "unimodal_logits", "unimodal_ceiling", "sample_xor_bits", "xor_posterior_y1", "compute_ceilings"]

SIGNALS = ("linear", "product")
MC_SAMPLES = 120_000
LATE_BINS = 32


def amplitude(signal: str, bit_acc: float) -> float:
    """Signal amplitude a (noise std 1) giving Bayes accuracy ``bit_acc`` for decoding the bit."""
    if signal == "linear":
        return float(ndtri(bit_acc))
    q = (1.0 + math.sqrt(2.0 * bit_acc - 1.0)) / 2.0  # solves q^2 + (1-q)^2 = bit_acc, q > 1/2
    return float(ndtri(q))


def bit_accuracy(signal: str, a: float) -> float:
    """Inverse of ``amplitude``: Bayes accuracy of decoding the bit at amplitude a."""
    q = float(ndtr(a))
    return q if signal == "linear" else q * q + (1.0 - q) ** 2


def _logcosh(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return x + np.log1p(np.exp(-2.0 * x)) - math.log(2.0)


def llr(signal: str, a: float, coords: np.ndarray) -> np.ndarray:
    """lambda = log p(x|b=1)/p(x|b=0) from the signal coordinates (N, 1) linear or (N, 2) product -> (N,)."""
    coords = np.asarray(coords, dtype=np.float64)
    if signal == "linear":
        return 2.0 * a * coords[:, 0]
    u, v = coords[:, 0], coords[:, 1]
    return _logcosh(a * (u + v)) - _logcosh(a * (u - v))


def bit_table(M: int) -> np.ndarray:
    """All 2^M bit vectors, (2^M, M) int; row j is the binary expansion of j (modality 0 = lowest bit)."""
    j = np.arange(2**M)
    return (j[:, None] >> np.arange(M)[None, :]) & 1


def joint_prior(p_unique: tuple[float, ...], p_redundant: float, p_synergy: float) -> np.ndarray:
    """P(y, b) marginalised over information types, (2, 2^M).

    unique_k: y uniform, b_k = y, other bits uniform.  redundant: every b_m = y.
    synergy: bits uniform, y = XOR of all bits.
    """
    M = len(p_unique)
    B = bit_table(M)
    prior = np.zeros((2, 2**M))
    for y in (0, 1):
        for k, p in enumerate(p_unique):
            prior[y] += p * 0.5 * 0.5 ** (M - 1) * (B[:, k] == y)
        prior[y] += p_redundant * 0.5 * np.equal(B, y).all(axis=1)
        prior[y] += p_synergy * 0.5**M * (B.sum(1) % 2 == y)
    return prior


def posterior_y1(lams: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """P(y=1 | x) from the per-modality LLRs (N, M) and the joint prior (2, 2^M) -> (N,).

    p(y | x) is proportional to sum_b P(y, b) prod_m exp(b_m lambda_m).
    """
    B = bit_table(lams.shape[1]).astype(np.float64)
    ll = lams @ B.T  # (N, 2^M)
    ll -= ll.max(axis=1, keepdims=True)  # log-sum-exp shift; the prior is bounded by 1
    e = np.exp(ll)
    s0, s1 = e @ prior[0], e @ prior[1]
    return s1 / (s0 + s1)


def marginal_prior(prior: np.ndarray, m: int) -> np.ndarray:
    """P(y, b_m) (2, 2) from the joint prior P(y, b) (2, 2^M)."""
    B = bit_table(int(round(np.log2(prior.shape[1]))))
    return np.stack([prior[:, B[:, m] == 0].sum(1), prior[:, B[:, m] == 1].sum(1)], axis=1)


def unimodal_logits(lams: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """logit p(y=1 | x_m) per modality from the LLRs (N, M) -> (N, M): the unimodal Bayes models
    (p(y | x_m) from the marginal prior P(y, b_m) and lambda_m)."""
    out = np.empty_like(lams, dtype=np.float64)
    for m in range(lams.shape[1]):
        P = marginal_prior(prior, m)  # P[y, b]
        lam = lams[:, m]
        # log(P[y,0] + P[y,1] e^lam), stable for large |lam|
        num = np.logaddexp(np.log(P[1, 0] + 1e-300), np.log(P[1, 1] + 1e-300) + lam)
        den = np.logaddexp(np.log(P[0, 0] + 1e-300), np.log(P[0, 1] + 1e-300) + lam)
        out[:, m] = num - den
    return out


def ensemble_logit(lams: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """sum_m logit p(y=1 | x_m) - (M-1) logit p(y=1) from the LLRs (N, M) -> (N,): the sum of the
    unimodal Bayes models' logits, i.e. the product of their posteriors divided by the prior M-1 times."""
    M = lams.shape[1]
    py1 = prior[1].sum()
    return unimodal_logits(lams, prior).sum(1) - (M - 1) * (np.log(py1) - np.log1p(-py1))


def unimodal_ceiling(bit_acc: float, p_unique_m: float, p_redundant: float) -> float:
    """Exact Bayes accuracy of modality m alone (see module docstring)."""
    rho = p_unique_m + p_redundant
    return rho * bit_acc + (1.0 - rho) * 0.5


def sample_structure(rng: np.random.Generator, n: int, p_unique: tuple[float, ...], p_redundant: float,
                     p_synergy: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw (type (n,), y (n,), bits (n, M)); type k < M is unique_k, M redundant, M + 1 synergy."""
    M = len(p_unique)
    probs = np.array([*p_unique, p_redundant, p_synergy], dtype=np.float64)
    cum = np.cumsum(probs / probs.sum())
    cum[-1] = 1.0  # a type of probability 0 is never drawn, even after rounding
    t = np.minimum(np.searchsorted(cum, rng.random(n), side="right"), M + 1)
    y = rng.integers(0, 2, size=n)
    bits = rng.integers(0, 2, size=(n, M))
    for k in range(M):
        bits[t == k, k] = y[t == k]
    red = t == M
    bits[red] = y[red, None]
    syn = t == M + 1
    # the last bit completes the XOR; with uniform y and uniform other bits, every bit stays uniform
    bits[syn, M - 1] = (y[syn] + bits[syn, : M - 1].sum(1)) % 2
    return t, y, bits


def sample_coords(rng: np.random.Generator, signal: str, a: float, bits: np.ndarray) -> np.ndarray:
    """Signal coordinates carrying ``bits`` (n,): (n, 1) linear or (n, 2) product, noise std 1."""
    n = len(bits)
    s = 2.0 * bits - 1.0
    if signal == "linear":
        return (a * s + rng.standard_normal(n))[:, None]
    r1 = 2.0 * rng.integers(0, 2, size=n) - 1.0
    r2 = s * r1
    return a * np.stack([r1, r2], axis=1) + rng.standard_normal((n, 2))


def _bin_index(lams: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    """(N, M) LLRs -> (N, M) bin indices in [0, K)."""
    return np.stack([np.searchsorted(e, lams[:, m]) for m, e in enumerate(edges)], axis=1)


def additive_ce_fit(bins: np.ndarray, y: np.ndarray, K: int, iters: int = 30) -> np.ndarray:
    """Cross-entropy-optimal piecewise-constant additive logit, by Newton's method -> theta (M, K).

    bins (N, M) bin indices, y (N,) labels. One-hot bin features make X^T W X a set of 2-D weighted
    histograms, so each step costs O(N M^2).
    """
    N, M = bins.shape
    flat = bins + K * np.arange(M)[None, :]  # index into the (M*K) parameter vector
    theta = np.zeros(M * K)
    ridge = 1e-3
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-theta[flat].sum(1)))
        g = ridge * theta
        for m in range(M):
            g += np.bincount(flat[:, m], weights=p - y, minlength=M * K)
        w = p * (1.0 - p)
        H = ridge * np.eye(M * K)
        for m in range(M):
            for n in range(M):
                H += np.bincount(flat[:, m] * (M * K) + flat[:, n], weights=w,
                                 minlength=(M * K) ** 2).reshape(M * K, M * K)
        step = np.linalg.solve(H, g)
        theta -= step
        if np.max(np.abs(step)) < 1e-6:
            break
    return theta.reshape(M, K)


def additive_accuracy_ascent(bins: np.ndarray, gain: np.ndarray, theta: np.ndarray,
                             sweeps: int = 6) -> tuple[np.ndarray, float]:
    """Maximise sum_i gain_i [sum_m theta[m, bins_im] > 0] by exact coordinate ascent over bin values.

    gain (N,) = 2 P(y=1|x) - 1, the expected gain of predicting 1 rather than 0. Each step sets one
    theta[m, k] to the exact maximiser given the rest: sorting the samples of that bin by the rest of
    their logit h, predicting 1 for the top j of them is achievable for every j that does not split a
    tie, and the best j is an argmax of a cumulative sum. Never decreases the objective.
    Returns (theta, objective = sum_i gain_i [pred_i = 1]).
    """
    N, M = bins.shape
    K = theta.shape[1]
    theta = theta.copy()
    f = theta[np.arange(M)[None, :], bins].sum(1)
    groups = []  # groups[m][k]: the samples in bin k of modality m
    for m in range(M):
        order = np.argsort(bins[:, m], kind="stable")
        groups.append(np.split(order, np.searchsorted(bins[order, m], np.arange(1, K))))
    for _ in range(sweeps):
        improved = False
        for m in range(M):
            for k in range(K):
                idx = groups[m][k]
                if len(idx) == 0:
                    continue
                h = f[idx] - theta[m, k]
                order = np.argsort(-h, kind="stable")
                hs, gs = h[order], gain[idx][order]
                score = np.concatenate([[0.0], np.cumsum(gs)])  # score[j]: predict 1 for the top j
                ok = np.ones(len(hs) + 1, dtype=bool)
                ok[1:-1] = hs[:-1] > hs[1:]  # j inside a tie of h is not achievable
                j = int(np.argmax(np.where(ok, score, -np.inf)))
                current = float(gs[hs + theta[m, k] > 0].sum())
                if score[j] <= current + 1e-9:
                    continue
                if j == 0:
                    a = -hs[0] - 1.0
                elif j == len(hs):
                    a = -hs[-1] + 1.0
                else:
                    a = -(hs[j - 1] + hs[j]) / 2.0
                f[idx] += a - theta[m, k]
                theta[m, k] = a
                improved = True
        if not improved:
            break
    return theta, float(gain[f > 0].sum())


def sample_xor_bits(rng: np.random.Generator, y: np.ndarray, k: int) -> np.ndarray:
    """Interaction bits c (n, k) with c_1 xor ... xor c_k = y: the first k-1 fair coins, the last completes
    the parity (so every single c_j, and every k-1 of them, is independent of y)."""
    c = rng.integers(0, 2, size=(len(y), k))
    c[:, -1] = (y + c[:, :-1].sum(1)) % 2
    return c


def xor_posterior_y1(lam_c: np.ndarray) -> np.ndarray:
    """P(y=1 | interaction channels) from their LLRs (N, k), y = parity of the k channel bits."""
    k = lam_c.shape[1]
    return posterior_y1(lam_c, joint_prior((0.0,) * k, 0.0, 1.0))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-15, 1.0 - 1e-15)
    return np.log(p) - np.log1p(-p)


LATE_XOR_BINS = 8  # interaction-channel bins per bit bin of the additive search (2-D per modality)


@functools.lru_cache(maxsize=64)
def compute_ceilings(signals: tuple[str, ...], bit_accs: tuple[float, ...], p_unique: tuple[float, ...],
                     p_redundant: float, p_synergy: float, mc_seed: int = 12345,
                     xor_accs: tuple[float, ...] = ()) -> dict:
    """Analytic/Monte-Carlo accuracy ceilings of one generator setting (cached; ~0.1-0.3 s once).

    ``xor_accs`` (one per modality, 0 = none; empty = no modality has one): Bayes accuracy of each
    modality's interaction channel, a linear coordinate carrying a bit c_m; on every sample the parity
    of the channel bits equals y. Given y the channels are independent of the information-type bits, so
    p(y | x) = p(y | bits part) p(y | channels) / p(y); alone (or in any strict subset) they say nothing.

    Returns {"unimodal": [M floats], "best_unimodal", "ensemble", "late_fusion", "full_fusion",
             "by_type": {"ensemble" | "late_fusion" | "full_fusion": [M+2]}} (types ordered unique0..,
    redundant, synergy). Independent of the data seed: the ceilings belong to the generator, not to one draw.
    """
    M = len(signals)
    amps = [amplitude(s, acc) for s, acc in zip(signals, bit_accs)]
    chan = [m for m in range(M) if xor_accs and xor_accs[m] > 0]
    if len(chan) == 1:
        raise ValueError("xor_accs: an interaction channel needs >= 2 modalities with one")
    xamps = [amplitude("linear", xor_accs[m]) for m in chan]
    uni = [unimodal_ceiling(acc, p_unique[m], p_redundant) for m, acc in enumerate(bit_accs)]
    prior = joint_prior(p_unique, p_redundant, p_synergy)
    rng = np.random.default_rng(mc_seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        t, y, bits = sample_structure(rng, n, p_unique, p_redundant, p_synergy)
        lams = np.stack([llr(signals[m], amps[m], sample_coords(rng, signals[m], amps[m], bits[:, m]))
                         for m in range(M)], axis=1)
        if not chan:
            return t, y, lams, None
        c = sample_xor_bits(rng, y, len(chan))
        lam_c = np.stack([llr("linear", a, sample_coords(rng, "linear", a, c[:, j]))
                          for j, a in enumerate(xamps)], axis=1)
        return t, y, lams, lam_c

    def posterior(lams: np.ndarray, lam_c: np.ndarray | None) -> np.ndarray:
        post = posterior_y1(lams, prior)
        if lam_c is None:
            return post
        return 1.0 / (1.0 + np.exp(-(_logit(post) + _logit(xor_posterior_y1(lam_c)))))

    def bin_index(lams: np.ndarray, lam_c: np.ndarray | None) -> np.ndarray:
        b = _bin_index(lams, edges)
        if lam_c is not None:  # channel modalities: a 2-D grid (bit-LLR bin, channel-LLR bin)
            for j, m in enumerate(chan):
                b[:, m] = b[:, m] * LATE_XOR_BINS + np.searchsorted(xedges[j], lam_c[:, j])
        return b

    t_fit, y_fit, lam_fit, c_fit = draw(MC_SAMPLES // 3)
    qs = np.linspace(0, 1, LATE_BINS + 1)[1:-1]
    edges = [np.quantile(lam_fit[:, m], qs) for m in range(M)]
    xqs = np.linspace(0, 1, LATE_XOR_BINS + 1)[1:-1]
    # draw() returns channel LLRs exactly when some modality has a channel
    xedges = [np.quantile(c_fit[:, j], xqs) for j in range(len(chan))] if c_fit is not None else []
    K = LATE_BINS * (LATE_XOR_BINS if chan else 1)
    bins_fit = bin_index(lam_fit, c_fit)
    gain = 2.0 * posterior(lam_fit, c_fit) - 1.0
    counts = [np.maximum(np.bincount(bins_fit[:, m], minlength=K), 1) for m in range(M)]
    lam_mean = np.stack([np.bincount(bins_fit[:, m], weights=lam_fit[:, m], minlength=K) / counts[m]
                         for m in range(M)])  # (M, K) a binned copy of each modality's LLR
    uni_fit = unimodal_logits(lam_fit, prior)
    ens_mean = np.stack([np.bincount(bins_fit[:, m], weights=uni_fit[:, m], minlength=K) / counts[m]
                         for m in range(M)])  # (M, K) a binned copy of the ensemble's terms
    ens_mean[0] += -(M - 1) * _logit(np.array([prior[1].sum()]))[0]
    # ascend from the CE optimum, from naive Bayes (sum of LLRs) and from the ensemble of unimodal Bayes
    # models; each unimodal Bayes rule is itself additive, so it stays a candidate (this keeps
    # late_fusion >= best_unimodal and >= ensemble up to Monte-Carlo error)
    cands = [additive_accuracy_ascent(bins_fit, gain, th)
             for th in (additive_ce_fit(bins_fit, y_fit, K), lam_mean, ens_mean)]
    for m in range(M):
        th = lam_mean * (np.arange(M) == m)[:, None]
        cands.append((th, float(gain[th[np.arange(M)[None, :], bins_fit].sum(1) > 0].sum())))
    if not chan:
        theta = max(cands, key=lambda r: r[1])[0]
    else:
        # the 2-D grids have 8x more bin values, and the ascent overfits the fit draw; choose among the
        # ascended and the raw starting rules on a held-out draw instead
        cands += [(ens_mean, 0.0), (lam_mean, 0.0)]
        _, _, lam_sel, c_sel = draw(MC_SAMPLES // 3)
        g_sel, b_sel = 2.0 * posterior(lam_sel, c_sel) - 1.0, bin_index(lam_sel, c_sel)
        theta = max((th for th, _ in cands),
                    key=lambda th: float(g_sel[th[np.arange(M)[None, :], b_sel].sum(1) > 0].sum()))

    t, y, lams, lam_c = draw(MC_SAMPLES)
    post = posterior(lams, lam_c)
    full_pred = (post > 0.5).astype(int)
    bins = bin_index(lams, lam_c)
    late_pred = (theta[np.arange(M)[None, :], bins].sum(1) > 0).astype(int)
    # Rao-Blackwellised accuracies: E[P(y = h(x) | x)] has lower variance than mean(h(x) == y)
    full = float(np.mean(np.maximum(post, 1.0 - post)))
    late = float(np.mean(np.where(late_pred == 1, post, 1.0 - post)))
    # the channels are uninformative alone, so each unimodal Bayes posterior is the bits part's
    ens_pred = (ensemble_logit(lams, prior) > 0).astype(int)
    ens = float(np.mean(np.where(ens_pred == 1, post, 1.0 - post)))
    by_type: dict[str, list[float]] = {"ensemble": [], "late_fusion": [], "full_fusion": []}
    for k in range(M + 2):
        mask = t == k
        for key, pred in (("ensemble", ens_pred), ("late_fusion", late_pred), ("full_fusion", full_pred)):
            by_type[key].append(float(np.mean(pred[mask] == y[mask])) if mask.any() else float("nan"))
    return {"unimodal": uni, "best_unimodal": max(uni), "ensemble": ens, "late_fusion": late, "full_fusion": full,
            "by_type": by_type}
