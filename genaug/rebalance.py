"""Rebalancing: latent density -> sampling weights -> resample / latent SMOTE.

Pure functions over latent arrays `z` [N, d] (posterior means from
`model.encode`); numpy in, numpy out. An image whose latent code sits where
few others do gets a large weight, so a weighted resample shows the model's
rare regions as often as its common ones.

Papers:
  * Amini et al. 2019, "Uncovering and Mitigating Algorithmic Bias through
    Learned Latent Structure" (DB-VAE): per-dimension latent histograms,
    smoothed, inverted; the paper combines dimensions by a product, the MIT
    6.S191 reference code (`get_training_sample_probabilities`) by a max.
  * Chawla et al. 2002, "SMOTE": new points on segments between a minority
    point and one of its k nearest minority neighbours; here in latent space.
  * Kish 1965, "Survey Sampling": effective sample size (sum w)^2 / sum w^2.
  * Loftsgaarden & Quesenberry 1965, "A nonparametric estimate of a
    multivariate density function": the k-th-neighbour density ~ 1 / r_k^d.
  * Scott 1992, "Multivariate Density Estimation": the KDE bandwidth rule.

Weights are `N * p_i` with `p_i` the sampling probability of image i: they
are positive, finite, and have mean exactly 1 (1 = an ordinary image; 10 =
drawn ten times as often as under uniform sampling).

NOTE: alpha for histograms is probability mass added to every bin (bin
masses sum to 1 before smoothing), not the reference code's `smoothing_fac`
added to `np.histogram(density=True)`. The two are the same up to the bin
width: the reference's (density + fac) normalised over bins equals
(mass + fac * width) / const, and the per-dimension constant cancels.
Mass units make alpha independent of the latent scale.
NOTE: the default aggregate is "product" (the paper), not "max" (the lab
code). On a constructed set (N=2000, d=12, 2% shifted by 4 in 3 dims) and on
PCA-16 of digits with 2% inverted images, "max" stays below a 12.6% resampled
rare share at every alpha (the main cluster's tails in any one of the d
dimensions look as rare as the real rare group); "product" at
alpha=0.15 gives ~12-15x the common weight and a ~22-24% rare share.
NOTE: "product" sharpens with every dimension that separates the rare group;
on wide latents (d >= 64) the default alpha can concentrate the weights on a
few images: read `summary(weights).ess_fraction` and raise alpha if it is small.
NOTE: gmm/kde are joint densities at the scale of single images. A compact
rare group has a *higher* joint density than the broad main cluster (2% of
the mass in a much smaller volume), so they down-weight it: emoji turned a
quarter and darkened (2%) got 0.0-0.1x the common weight from kde in a VAE's
features, and the classifier's accuracy on them fell from 0.62 to 0.19-0.25.
The default, clusters, and mixture weight whole groups (each cluster or
component drawn equally, images within one alike): a tight group with a
cluster of its own is lifted however dense, and common images keep flat
weights. Their limits: a group's lift is capped at about (N / components) /
its size, and rare images scattered over the common clusters are not lifted.
knn measures density at the scale of a group (the distance to the neighbour
5% of N away), so it lifts both tight groups and isolated images, but also
sparse common images: it thinned the common group (ESS ~20% of N) and cost
the classifier 2-4 points on it. Measured side by side: benchmarks/README.md,
"Rebalancing".
NOTE: how visible a rare group is depends on the encoder more than on this
module. Posterior means of genaug's 16-d VAE on digits with 2% inverted images
put the inverted images in a tight cluster (5-NN purity 1.0), but whether that
cluster is apart in 1 or in 4 dimensions changes with the training seed, and
with it the default weights' rare/common ratio (measured 1x to 35x).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import WeightedRandomSampler

from genaug._version import __version__
from genaug.data.align import aligned
from genaug.data.imageset import ImageSet
from genaug.data.parquet import image_table, to_pandas, write_tables
from genaug.data.readers import as_imageset
from genaug.errors import GenaugError, warn_all
from genaug.fit import new_model, train_on
from genaug.limits import check_fits_in_memory
from genaug.models.base import GenerativeModel
from genaug.models.registry import get_family
from genaug.models.store import load_model, model_hash
from genaug.progress import AUTO, resolve_console
from genaug.scoring import score_images
from genaug.scoring.rarity import model_features
from genaug.train import TrainConfig

METHODS = ("knn", "mixture", "clusters", "histogram", "gmm", "kde")
# Methods that weight whole groups (mixture components, clusters) by their size.
GROUP_METHODS = ("mixture", "clusters")
AGGREGATES = ("product", "max")
DEFAULT_METHOD = "clusters"
DEFAULT_AGGREGATE = "product"
DEFAULT_BINS = 10
# Groups (mixture components / clusters) the group methods look for. Fewer
# groups lift a rare group that gets its own more (each group gets 1/K of
# the draws), but a rare group merges into a common one when K is too small.
DEFAULT_COMPONENTS = 8
# A group needs this many images on average: small sets get fewer groups.
_MIN_GROUP_SIZE = 10
# knn: the neighbour whose distance measures rarity, as a share of N. A group
# of fewer images than this has its k-th neighbour outside itself, however
# tight it is, so it reads as rare: the scale of "a rare group".
KNN_SHARE = 0.05
# knn: density ~ 1 / r_k^KNN_POWER. The textbook exponent is the dimension d
# (32 for the VAE), which lets a handful of images take every draw; 8 keeps the
# effective sample size near 20% of N on the benchmark tasks.
KNN_POWER = 8.0
# Smoothing per method (see `default_alpha`). `DEFAULT_ALPHA = None` means "the
# method's own default": one number cannot serve all three scales below.
DEFAULT_ALPHAS = {
    # Bin mass added to every bin (a flat histogram has mass 1/bins = 0.1 per bin).
    # Picked on the constructed and digits-PCA sets: 0.1 overshoots (rare share
    # 35-37%, ESS 6-7% of N), 0.2 is borderline (16-17%), 0.15 gives 22-24%.
    ("histogram", "product"): 0.15,
    # The reference code's smoothing_fac=0.001 on unit-scale latents (bin width ~1).
    # Smaller is sharper, but "max" cannot pass ~7x whatever alpha (see module NOTE).
    ("histogram", "max"): 0.001,
    # Density floor as a fraction of the typical (geometric-mean) density.
    ("gmm", None): 0.01,
    ("kde", None): 0.01,
    ("knn", None): 0.01,
    # Group weights are bounded by 1 / (smallest group's share): no floor needed.
    ("mixture", None): 0.0,
    ("clusters", None): 0.0,
}
DEFAULT_ALPHA = None
# Weights below exp(-_MAX_LOG_RANGE) of the largest are floored there so every
# weight stays positive and finite in float64 (exp(-700) ~ 1e-304).
_MAX_LOG_RANGE = 700.0


# -- density -----------------------------------------------------------------
def default_alpha(method: str = DEFAULT_METHOD, aggregate: str = DEFAULT_AGGREGATE) -> float:
    """The smoothing `alpha` used when none is given, for `method` (and `aggregate` for histograms)."""
    _check_choice("method", method, METHODS)
    _check_choice("aggregate", aggregate, AGGREGATES)
    return DEFAULT_ALPHAS[(method, aggregate if method == "histogram" else None)]


def latent_density(
    z: np.ndarray,
    *,
    method: str = DEFAULT_METHOD,
    bins: int = DEFAULT_BINS,
    alpha: float | None = DEFAULT_ALPHA,
    aggregate: str = DEFAULT_AGGREGATE,
    seed: int = 0,
    components: int | None = None,
    kde_bandwidth: float | str | None = None,
) -> np.ndarray:
    """Smoothed latent density of every row of `z` [N, d]: the quantity the weights invert.

    Returned on a relative scale (geometric mean 1 over the N points): only
    ratios between images are meaningful. `sampling_weights` is `1 / density`
    normalised to mean 1, so the lowest density is the highest weight.

    Methods (alpha = None takes `default_alpha(method, aggregate)`):

    * ``"knn"``: the distance r_k from each image to its k-th nearest
      neighbour (z standardised per dimension, k = KNN_SHARE of N: 5%),
      density proportional to r_k^-KNN_POWER. Both an isolated image and a
      tight group of fewer than k images have a far k-th neighbour, so
      both read as rare, where a joint density (kde, gmm) rates a tight
      group as *dense*.
    * ``"mixture"`` (inverse mixture weight): a diagonal-covariance
      GaussianMixture with `components` components (default
      DEFAULT_COMPONENTS, fewer on small sets) on z standardised per
      dimension; the "density" of image i is 1 / sum_k r_ik / pi_k, with
      r_ik its responsibilities and pi_k the mixing proportions, so every
      component gets the same share of the draws and a small component
      (a rare group) is drawn as often as a large one. Seeded by `seed`.
    * ``"clusters"`` (cluster frequency): k-means with `components` clusters
      on the same standardised z; the density of image i is the size of its
      cluster: every cluster gets the same share of the draws.
    * ``"histogram"`` (DB-VAE). For each dimension j, a histogram of z[:, j]
      with `bins` equal bins over the observed range; `q_ij` is the mass
      (fraction of images) of the bin image i falls in, smoothed to
      `s_ij = q_ij + alpha` (alpha in bin-mass units: a flat histogram has
      1/bins per bin; alpha >> 1/bins flattens every dimension).
      ``aggregate="product"`` (paper): density = prod_j s_ij, a joint density
      that treats dimensions as independent (computed in log space).
      ``aggregate="max"`` (reference code): r_ij = (1/s_ij) / mean_i(1/s_ij),
      density = 1 / max_j r_ij (the rarest dimension decides).
    * ``"gmm"``: a full-covariance GaussianMixture on z standardised per
      dimension; its joint density. `components` components, or the BIC-best of 1, 2, 4, 8
      (at most N/20). Seeded by `seed`.
    * ``"kde"``: Gaussian KernelDensity on standardised z, evaluated
      leave-one-out (in d >= 8 a point's own kernel otherwise dominates its
      density). Bandwidth `kde_bandwidth`: a float, "scott" (default,
      N^(-1/(d+4))) or "silverman" ((N(d+2)/4)^(-1/(d+4))). O(N^2) time.

    Joint methods smooth as density = f/f_ref + alpha, with f_ref the
    geometric-mean density over the N points: alpha is a floor, as a fraction
    of the typical density, below which images count as equally rare.
    alpha -> infinity gives a flat density (uniform weights) for every method.
    """
    return np.exp(_log_density(z, method, bins, alpha, aggregate, seed, components, kde_bandwidth))


def _log_density(z, method, bins, alpha, aggregate, seed, components, kde_bandwidth) -> np.ndarray:
    """log of `latent_density`, centred to mean 0 (log space keeps wide latents finite)."""
    z = _check_latents(z)
    _check_choice("method", method, METHODS)
    _check_choice("aggregate", aggregate, AGGREGATES)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise GenaugError(f"bins must be an integer >= 2, got {bins!r}")
    alpha = default_alpha(method, aggregate) if alpha is None else _check_alpha(alpha)
    if len(z) == 1:
        return np.zeros(1)
    if method == "histogram":
        log_d = _histogram_log_density(z, int(bins), alpha, aggregate)
    else:
        zs = _standardise(z)
        if method == "knn":
            log_f = _knn_log_density(zs)
        elif method in GROUP_METHODS:
            # Density = the image's group mass: the smaller its group, the rarer.
            log_f = -_log_group_weight(zs, method, components, seed)
        elif method == "gmm":
            log_f = _gmm_log_density(zs, components, seed)
        else:
            log_f = _kde_log_density(zs, kde_bandwidth)
        # log(f / f_ref + alpha), f_ref the geometric mean of f; logaddexp keeps
        # points with f far below f_ref (common in d >= 8) from underflowing.
        log_d = np.logaddexp(log_f - log_f.mean(), math.log(alpha) if alpha > 0 else -np.inf)
    return log_d - log_d.mean()


def _histogram_log_density(z: np.ndarray, bins: int, alpha: float, aggregate: str) -> np.ndarray:
    n, d = z.shape
    log_s = np.empty((n, d))
    for j in range(d):
        edges = np.histogram_bin_edges(z[:, j], bins=bins)
        # Index by the interior edges so the maximum lands in the last bin, as
        # the reference does by setting the outer edges to +-inf; counting from
        # the same index (not np.histogram's own) keeps every point's bin non-empty.
        idx = np.searchsorted(edges[1:-1], z[:, j], side="right")
        counts = np.bincount(idx, minlength=bins)
        log_s[:, j] = np.log(counts[idx] / n + alpha)
    if aggregate == "product":
        return log_s.sum(axis=1)
    # max_j of (1/s_ij) / mean_i(1/s_ij), in logs: -log s - log mean exp(-log s).
    log_inv = -log_s
    log_mean = np.log(np.mean(np.exp(log_inv - log_inv.max(axis=0)), axis=0)) + log_inv.max(axis=0)
    return -np.max(log_inv - log_mean, axis=1)


def _knn_log_density(zs: np.ndarray) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    n = len(zs)
    k = min(n - 1, max(1, round(KNN_SHARE * n)))
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(zs).kneighbors(zs)
    r = dist[:, -1]  # column 0 is the image itself (or a duplicate at distance 0)
    r = np.maximum(r, 1e-12 * max(r.max(), 1e-300))  # k duplicates: distance 0, densest
    return -KNN_POWER * np.log(r)


def _check_components(components, n: int) -> int:
    if isinstance(components, bool) or not isinstance(components, (int, np.integer)) or not 1 <= components <= n:
        raise GenaugError(f"components must be an integer in [1, {n}], got {components!r}")
    return int(components)


def group_count(n: int, components: int | None = None) -> int:
    """Groups the group methods fit for `n` images: `components` (default DEFAULT_COMPONENTS),
    at most one per _MIN_GROUP_SIZE images."""
    k = DEFAULT_COMPONENTS if components is None else _check_components(components, n)
    return max(1, min(k, n // _MIN_GROUP_SIZE))


def latent_groups(z: np.ndarray, *, method: str = "mixture", components: int | None = None, seed: int = 0):
    """(group index [N], group weight [N]) of the group methods on latents `z`.

    The group of an image is its most responsible mixture component
    (`"mixture"`) or its k-means cluster (`"clusters"`); the group weight is
    the unnormalised inverse group mass, sum_k r_ik / pi_k or N / cluster size.
    """
    _check_choice("group method", method, GROUP_METHODS)
    zs = _standardise(_check_latents(z))
    k = group_count(len(zs), components)
    if method == "clusters":
        from sklearn.cluster import KMeans

        groups = KMeans(k, n_init=3, random_state=seed).fit_predict(zs)
        sizes = np.bincount(groups, minlength=k)
        return groups, len(zs) / sizes[groups]
    from sklearn.mixture import GaussianMixture

    # Diagonal covariances: 2d parameters per component instead of d(d+3)/2,
    # so eight components stay well determined by a few thousand images.
    gmm = GaussianMixture(k, covariance_type="diag", reg_covar=1e-3, random_state=seed).fit(zs)
    resp = gmm.predict_proba(zs)
    return resp.argmax(axis=1), resp @ (1.0 / gmm.weights_)


def _log_group_weight(zs: np.ndarray, method: str, components: int | None, seed: int) -> np.ndarray:
    return np.log(latent_groups(zs, method=method, components=components, seed=seed)[1])


def _gmm_log_density(zs: np.ndarray, components: int | None, seed: int) -> np.ndarray:
    from sklearn.mixture import GaussianMixture  # sklearn is slow to import; only gmm needs it

    n = len(zs)
    if components is not None:
        candidates = [_check_components(components, n)]
    else:
        candidates = [k for k in (1, 2, 4, 8) if k == 1 or 20 * k <= n]
    best, best_bic = None, np.inf
    for k in candidates:
        # reg_covar 1e-3 (of unit variance) keeps near-duplicate latents from
        # making a singular component with an infinite density.
        gmm = GaussianMixture(k, covariance_type="full", reg_covar=1e-3, random_state=seed).fit(zs)
        bic = gmm.bic(zs)
        if bic < best_bic:
            best, best_bic = gmm, bic
    return best.score_samples(zs)


def _kde_log_density(zs: np.ndarray, bandwidth: float | str | None) -> np.ndarray:
    from sklearn.neighbors import KernelDensity

    n, d = zs.shape
    if bandwidth is None or bandwidth == "scott":
        h = n ** (-1.0 / (d + 4))
    elif bandwidth == "silverman":
        h = (n * (d + 2) / 4.0) ** (-1.0 / (d + 4))
    elif _is_number(bandwidth) and bandwidth > 0 and math.isfinite(bandwidth):
        h = float(bandwidth)
    else:
        raise GenaugError(f"kde_bandwidth must be a positive number, 'scott' or 'silverman', got {bandwidth!r}")
    log_f = KernelDensity(bandwidth=h).fit(zs).score_samples(zs)
    # Leave-one-out: f_-i = (N f_i - K(0)) / (N - 1). The ratio is clipped just
    # below 1 so an isolated point gets a tiny density instead of log(0).
    log_k0 = -0.5 * d * math.log(2 * math.pi) - d * math.log(h)
    own = np.minimum(np.exp(log_k0 - math.log(n) - log_f), 1.0 - 1e-12)
    return math.log(n) + log_f + np.log1p(-own) - math.log(n - 1)


def _standardise(z: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per dimension (constant dimensions stay 0)."""
    sd = z.std(axis=0)
    return (z - z.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


# -- weights -----------------------------------------------------------------
def sampling_weights(
    z: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    per_class: bool = False,
    method: str = DEFAULT_METHOD,
    bins: int = DEFAULT_BINS,
    alpha: float | None = DEFAULT_ALPHA,
    aggregate: str = DEFAULT_AGGREGATE,
    seed: int = 0,
    components: int | None = None,
    kde_bandwidth: float | str | None = None,
) -> np.ndarray:
    """Per-image sampling weights `N * p_i`, p_i proportional to 1 / `latent_density`.

    Positive, finite, mean exactly 1 (up to float rounding). Arguments as in
    `latent_density`.

    `per_class=True` (needs `labels`): the density and weights are computed
    within each label group on its own, then each group keeps its share of
    the total mass (group c's weights sum to its size n_c). Rebalancing then
    happens inside every class and never changes the class mix: use it when
    the label distribution is intended and only within-class rarity should be
    corrected. A group of one image gets weight 1.
    """
    z = _check_latents(z)
    options = dict(method=method, bins=bins, alpha=alpha, aggregate=aggregate, seed=seed,
                   components=components, kde_bandwidth=kde_bandwidth)
    if not per_class:
        return _weights_from_log_density(_log_density(z, **options))
    if labels is None:
        raise GenaugError("per_class needs labels")
    labels = _check_labels(labels, len(z), "latent rows")
    weights = np.empty(len(z))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        weights[members] = _weights_from_log_density(_log_density(z[members], **options))
    return weights


def _weights_from_log_density(log_density: np.ndarray) -> np.ndarray:
    log_w = -log_density
    log_w = np.maximum(log_w - log_w.max(), -_MAX_LOG_RANGE)
    w = np.exp(log_w)
    return w * (len(w) / w.sum())


def rarity_rank(weights: np.ndarray) -> np.ndarray:
    """Rank of every image by weight: 1 = rarest (highest weight); ties keep input order."""
    w = _check_weights(weights)
    order = np.argsort(-w, kind="stable")
    rank = np.empty(len(w), dtype=np.int64)
    rank[order] = np.arange(1, len(w) + 1)
    return rank


def resample(weights: np.ndarray, size: int, *, seed: int = 0) -> np.ndarray:
    """`size` indices drawn with replacement, P(i) proportional to weights[i] (numpy Generator)."""
    w = _check_weights(weights)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise GenaugError(f"resample size must be an integer >= 1, got {size!r}")
    return np.random.default_rng(seed).choice(len(w), size=int(size), replace=True, p=w / w.sum())


def weighted_sampler(
    weights: np.ndarray, num_samples: int | None = None, *, seed: int | None = None
) -> WeightedRandomSampler:
    """A torch `WeightedRandomSampler` over the images (with replacement; N draws per epoch by default).

    `seed` fixes its torch.Generator so the draws repeat; None uses torch's global RNG.
    """
    w = _check_weights(weights)
    if num_samples is None:
        num_samples = len(w)
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise GenaugError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    generator = None if seed is None else torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(torch.as_tensor(w, dtype=torch.float64), int(num_samples), replacement=True, generator=generator)


# -- summary -----------------------------------------------------------------
def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2: N for uniform weights, 1 for a single image."""
    w = _check_weights(weights)
    return float(w.sum() ** 2 / np.sum(w**2))


def rare_share(weights: np.ndarray, rare_mask: np.ndarray) -> float:
    """Expected share of weighted draws that land on `rare_mask` (its mask fraction for uniform weights)."""
    w = _check_weights(weights)
    mask = _check_mask(rare_mask, len(w))
    return float(w[mask].sum() / w.sum())


def drawn_share(indices: np.ndarray, rare_mask: np.ndarray) -> float:
    """Realised share of a resample (`indices` from `resample`) that lands on `rare_mask`."""
    indices = np.asarray(indices)
    if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
        raise GenaugError("indices must be a non-empty 1-D integer array")
    mask = np.asarray(rare_mask, dtype=bool)
    if indices.min() < 0 or indices.max() >= len(mask):
        raise GenaugError(f"indices out of range for {len(mask)} images")
    return float(mask[indices].mean())


def rarest_mask(weights: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """The ceil(fraction * N) images of highest weight (lowest latent density); ties by input order."""
    w = _check_weights(weights)
    if not 0 < fraction <= 1:
        raise GenaugError(f"fraction must be in (0, 1], got {fraction}")
    k = max(1, math.ceil(fraction * len(w) - 1e-9))
    return rarity_rank(w) <= k


@dataclass(frozen=True)
class RebalanceSummary:
    """Before/after figures of a reweighting.

    The "rarest decile" is the 10% of images with the lowest latent density,
    i.e. the highest weight (weight is a decreasing function of density; with
    `per_class` weights it is the highest weight across classes). Before
    rebalancing they are drawn ~10% of the time (exactly their count / N);
    after, as often as their summed sampling probability. `max_weight` and
    `min_weight` are relative to the mean weight (1 = an ordinary image).
    """

    n: int
    ess: float
    ess_fraction: float
    rarest_decile_share_before: float
    rarest_decile_share_after: float
    max_weight: float
    min_weight: float

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (for Parquet metadata and logs)."""
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"effective sample size {self.ess:.0f} of {self.n} ({self.ess_fraction:.0%}); "
            f"rarest decile drawn {self.rarest_decile_share_before:.0%} -> {self.rarest_decile_share_after:.0%}; "
            f"weights {self.min_weight:.2f}..{self.max_weight:.2f}"
        )


def summary(weights: np.ndarray) -> RebalanceSummary:
    """ESS and the rarest decile's share of draws before and after reweighting."""
    w = _check_weights(weights)
    rarest = rarest_mask(w, 0.1)
    ess = effective_sample_size(w)
    mean = w.mean()
    return RebalanceSummary(
        n=len(w),
        ess=ess,
        ess_fraction=ess / len(w),
        rarest_decile_share_before=float(rarest.mean()),
        rarest_decile_share_after=rare_share(w, rarest),
        max_weight=float(w.max() / mean),
        min_weight=float(w.min() / mean),
    )


# -- groups and guard rails --------------------------------------------------
# A group is "up-weighted" when its images are drawn at least this many times
# as often as under uniform sampling (mean weight).
UPWEIGHTED = 1.5
# Below this effective sample size (share of N), a few images dominate the draws.
# Not higher: weights that give a 2% group half the draws (the oracle of
# benchmarks/README.md) have an ESS of 4 * 0.02 * 0.98 = 7.8% of N.
LOW_ESS = 0.05
# Weights are "near uniform" when the rarest decile gains less than this share of the draws.
NEAR_UNIFORM_GAIN = 0.03
# Example ids stored and printed per group.
EXAMPLES = 5


def upweighted_groups(weights: np.ndarray, groups: np.ndarray, names: list[str], ids: list[str]) -> list[dict]:
    """The groups whose mean weight is at least UPWEIGHTED, highest first, as plain dicts:
    name, size, mean weight, share of the images and of the draws, and the
    ids of the (up to EXAMPLES) highest-weight members."""
    w = _check_weights(weights)
    out = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        mean = float(w[members].mean() / w.mean())
        if mean < UPWEIGHTED:
            continue
        top = members[np.argsort(-w[members], kind="stable")[:EXAMPLES]]
        out.append({"group": names[g], "size": int(members.size), "mean_weight": round(mean, 3),
                    "share_before": round(members.size / len(w), 4), "share_after": round(float(w[members].sum() / w.sum()), 4),
                    "examples": [ids[i] for i in top]})
    return sorted(out, key=lambda d: -d["mean_weight"])


def weight_warnings(
    s: RebalanceSummary, groups: list[dict], *, before_fit: tuple[RebalanceSummary, list[dict]] | None = None
) -> list[str]:
    """One line per problem with the weights, each naming a fix. `before_fit`: the summary and
    up-weighted groups of the density weights alone, when a worst-fit boost went on top (the
    near-uniform check is then about the density: the boost alone always moves the rarest decile)."""
    warnings = []
    if s.ess_fraction < LOW_ESS:
        warnings.append(
            f"degenerate weights: effective sample size {s.ess:.0f} of {s.n} ({s.ess_fraction:.0%}), a few images "
            "dominate the draws; smooth them (a larger --alpha) or weight groups (--density clusters)"
        )
    density, density_groups = before_fit or (s, groups)
    if density.rarest_decile_share_after - density.rarest_decile_share_before < NEAR_UNIFORM_GAIN and not density_groups:
        what = "near-uniform weights" if before_fit is None else (
            "near-uniform density, only the worst-fitted images are up-weighted (--fit-boost)")
        warnings.append(
            f"{what}: the density draws the rarest 10% of images {density.rarest_decile_share_after:.0%} of the time "
            "(10% without weights) and up-weights no group; the model's features show no rare group: train it "
            "longer (--time-limit, --epochs), try --components 4, or --density knn for isolated images"
        )
    return warnings


# -- the model's fit ---------------------------------------------------------
# JTT ("Just Train Twice", Liu et al. 2021) up-weights the examples a first
# model gets wrong; the generative analogue up-weights the images the feature
# model fits worst. It sees rare groups the features hide: a colour-cast 2%
# of the emoji is a tight group in the VAE's features, as dense as the common
# images, so no density or clustering lifts it (1.3-1.7x), but the model fits
# it badly (complexity AUROC 0.93). The fit score is `complexity` (bits/dim
# minus PNG bits/dim): raw bits/dim would up-weight every busy image.
# Opt-in (`rebalance(fit_boost=1)` by default): through a classifier (3 seeds,
# emoji) it lifted the constructed groups' weights (cast 1.3x -> 2.9x, night
# 6.5x -> 16.5x) but not their accuracy beyond noise (+0.6, 0, +0.6 points),
# and it *lowered* the real rare group, dark skin tones, which the model fits
# better than average: 0.93x -> 0.74x and 3 points less rare accuracy.
DEFAULT_FIT_SHARE = 0.1
DEFAULT_FIT_BOOST = 3.0  # what `worst_fit_weights` uses when asked, and the README suggests


def worst_fitted(fit: np.ndarray, share: float = DEFAULT_FIT_SHARE, labels: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the ceil(share * n) images with the highest `fit` score (worst fit),
    within each label when `labels` are given; ties by input order."""
    fit = _check_fit(fit)
    share = _check_fit_share(share)
    groups = np.zeros(len(fit), dtype=np.int64) if labels is None else _check_labels(labels, len(fit))
    worst = np.zeros(len(fit), dtype=bool)
    for label in np.unique(groups):
        members = np.flatnonzero(groups == label)
        k = max(1, math.ceil(share * len(members) - 1e-9))
        worst[members[np.argsort(-fit[members], kind="stable")[:k]]] = True
    return worst


def worst_fit_weights(
    weights: np.ndarray,
    fit: np.ndarray,
    *,
    share: float = DEFAULT_FIT_SHARE,
    boost: float = DEFAULT_FIT_BOOST,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """`weights` with the worst-fitted `share` of the images (`worst_fitted`) drawn `boost` times as
    often, renormalised to mean 1; with `labels`, within each label, and each label keeps its
    share of the total mass (as `sampling_weights(per_class=True)`). `boost=1` returns the
    weights unchanged (up to normalisation)."""
    w = _check_weights(weights)
    fit = _check_fit(fit)
    if len(fit) != len(w):
        raise GenaugError(f"{len(fit)} fit scores for {len(w)} weights")
    boost = _check_fit_boost(boost)
    labels = None if labels is None else _check_labels(labels, len(w))
    return _boosted(w, worst_fitted(fit, share, labels), boost, labels)


def _boosted(w: np.ndarray, worst: np.ndarray, boost: float, labels: np.ndarray | None) -> np.ndarray:
    """`w` with the `worst` images times `boost`, mean 1; each label keeps its mass."""
    out = w * np.where(worst, boost, 1.0)
    if labels is not None:
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            out[members] *= w[members].sum() / out[members].sum()
    return out * (len(out) / out.sum())


# -- latent SMOTE ------------------------------------------------------------
def latent_smote(
    z: np.ndarray,
    weights: np.ndarray,
    n: int,
    *,
    k: int = 5,
    labels: np.ndarray | None = None,
    rare_quantile: float = 0.9,
    rare: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` new latent points in the rare regions, SMOTE-style (Chawla et al. 2002).

    The rare set is the images with weight >= the `rare_quantile` quantile of
    the weights (default: the rarest 10%, as in `summary`; uniform weights
    make every image rare), or the images of the boolean mask `rare` when
    given (`rebalance` passes the members of the up-weighted groups: with
    group weights, ties make the quantile rule take a common group whole).
    Each new point:

    1. an anchor a is drawn from the rare set with probability proportional
       to its weight (the rarest images anchor most often);
    2. a neighbour b is drawn uniformly from a's `k` nearest neighbours
       (Euclidean, in z) among the *other* rare images; when `labels` is
       given, only those of a's label among these k count;
    3. z_new = z_a + u (z_b - z_a), u ~ U(0, 1).

    An anchor with no candidate (no rare image of its label among its k
    nearest) yields an exact copy of itself (b = a): interpolating toward a
    farther image, another label or a common image would leave the rare
    region or change the class.

    Returns (new_z [n, d], anchor_index [n], neighbour_index [n]); the indices
    point into `z`, and the label of new point i is labels[anchor_index[i]].
    Deterministic for a given `seed`.
    """
    from sklearn.neighbors import NearestNeighbors

    z = _check_latents(z)
    w = _check_weights(weights)
    if len(w) != len(z):
        raise GenaugError(f"{len(w)} weights for {len(z)} latent rows")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise GenaugError(f"n must be an integer >= 0, got {n!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise GenaugError(f"k must be an integer >= 1, got {k!r}")
    if not 0 <= rare_quantile < 1:
        raise GenaugError(f"rare_quantile must be in [0, 1), got {rare_quantile}")
    if labels is not None:
        labels = _check_labels(labels, len(z), "latent rows")
    if n == 0:
        return np.empty((0, z.shape[1])), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)

    rng = np.random.default_rng(seed)
    if rare is None:
        rare = np.flatnonzero(w >= np.quantile(w, rare_quantile))
    else:
        rare = np.flatnonzero(_check_mask(rare, len(w)))
        if rare.size == 0:
            raise GenaugError("the rare mask selects no image to anchor new points on")
    p = w[rare] / w[rare].sum()
    anchors = rare[rng.choice(len(rare), size=n, replace=True, p=p)]
    # The neighbourhood is geometric, among all rare images; labels only filter it.
    # Searching within the anchor's label instead reaches across the latent space
    # when a label has few rare members: on digits with 2% inverted images, an
    # inverted 3 was paired with a plain 3 and decoded to grey mush (bench_rebalance:
    # rare-group accuracy 0.541 with the old rule, 0.611 with this one, over 3 seeds).
    unique, row_of = np.unique(anchors, return_inverse=True)
    m = min(k + 1, len(rare))
    _, found = NearestNeighbors(n_neighbors=m).fit(z[rare]).kneighbors(z[unique])
    candidates = []
    for anchor, near in zip(unique, rare[found]):
        # Drop the anchor itself (not necessarily first when latents repeat).
        cand = near[near != anchor][:k]
        candidates.append(cand if labels is None else cand[labels[cand] == labels[anchor]])
    neighbours = anchors.copy()
    for row, u in enumerate(row_of):
        if candidates[u].size:
            neighbours[row] = candidates[u][rng.integers(candidates[u].size)]
    u = rng.random(n)[:, None]
    new_z = z[anchors] + u * (z[neighbours] - z[anchors])
    return new_z, anchors.astype(np.int64), neighbours


# -- argument checks ---------------------------------------------------------
def _check_latents(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise GenaugError(f"latents must be a 2-D array [N, d] with N, d >= 1, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise GenaugError(f"latents hold {int(np.sum(~np.isfinite(z)))} non-finite values (NaN or inf)")
    return z


def _check_weights(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise GenaugError(f"weights must be a non-empty 1-D array, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise GenaugError("weights must be finite, >= 0, and not all 0")
    return w


def _check_mask(mask, n: int) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != (n,):
        raise GenaugError(f"mask of shape {mask.shape} for {n} images")
    return mask.astype(bool)


def _check_fit(fit) -> np.ndarray:
    fit = np.asarray(fit, dtype=np.float64)
    if fit.ndim != 1 or fit.size == 0:
        raise GenaugError(f"fit scores must be a non-empty 1-D array, got shape {fit.shape}")
    if not np.all(np.isfinite(fit)):
        raise GenaugError(f"fit scores hold {int(np.sum(~np.isfinite(fit)))} non-finite values (NaN or inf)")
    return fit


def _check_fit_share(share) -> float:
    if not _is_number(share) or not 0 < share < 1:
        raise GenaugError(f"--fit-share must be a number in (0, 1), got {share!r}")
    return float(share)


def _check_fit_boost(boost) -> float:
    if not _is_number(boost) or not boost >= 1 or not math.isfinite(boost):
        raise GenaugError(f"--fit-boost must be a finite number >= 1 (1 = off), got {boost!r}")
    return float(boost)


def _check_labels(labels, n: int, rows: str = "images") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise GenaugError(f"{labels.shape[0] if labels.ndim else 0} labels for {n} {rows}")
    return labels


def _check_alpha(alpha) -> float:
    if not _is_number(alpha) or not alpha >= 0 or not math.isfinite(alpha):
        raise GenaugError(f"alpha must be a finite number >= 0, got {alpha!r}")
    return float(alpha)


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise GenaugError(f"unknown {name} '{value}' (choose from {', '.join(choices)})")


# -- the job: encode -> weights -> resample / synthesize ----------------------
# The model that measures rarity trains on every image (no trimmed
# likelihood): trimming leaves each batch's worst-fit images out of the
# gradient, and a rare but valid group is exactly what fits worst, so its
# images get a poorer place in the latent space. Measured with the knn
# weights, mean rare/common weight ratio untrimmed vs trimmed (10%): 3.7 vs
# 2.6 over six emoji tasks (tone, night, cast; 2 seeds), 19.8 vs 13.9 on
# digits with 2% inverted (2 data x 2 training seeds). (With the earlier kde
# default trimming had helped on digits.)
REBALANCE_TRIM = 0.0
@dataclass
class RebalanceResult:
    """Weights, rarity ranks, a weighted resample and optional synthetic images."""

    data: ImageSet
    latents: np.ndarray
    weights: np.ndarray
    rarity: np.ndarray
    resampled: np.ndarray
    summary: RebalanceSummary
    settings: dict
    groups: list[dict] = field(default_factory=list)
    # How badly the model fits each image (complexity: higher = worse) and the images drawn
    # `fit_boost` times as often for fitting worst (None: not applied).
    fit_scores: np.ndarray | None = None
    worst_fit: np.ndarray | None = None
    worst_fit_report: dict | None = None
    warnings: list[str] = field(default_factory=list)
    synthetic: ImageSet | None = None
    synthetic_anchor: np.ndarray | None = None
    synthetic_neighbour: np.ndarray | None = None

    def resample_counts(self) -> np.ndarray:
        """How many times each input row appears in the weighted resample."""
        return np.bincount(self.resampled, minlength=len(self.data)).astype(np.int64)

    def sampler(self, num_samples: int | None = None, *, seed: int | None = None, dataset=None):
        """A `WeightedRandomSampler` for a DataLoader: over the input rows in genaug's order, or,
        with `dataset` (an ImageFolder, a Hugging Face dataset with ids, an ImageSet, a list of
        ids), over that dataset's rows, each weighted by the result for its id."""
        weights = self.weights if dataset is None else self.aligned(dataset)
        return weighted_sampler(weights, num_samples, seed=seed)

    def aligned(self, dataset, column: str = "weight") -> np.ndarray:
        """`column` (weight, rarity or resample_count) in the row order of `dataset`, matched by id."""
        values = {"weight": self.weights, "rarity": self.rarity, "resample_count": self.resample_counts()}
        if column not in values:
            raise GenaugError(f"no per-image column '{column}'; choose from {', '.join(values)}")
        return aligned(values[column], self.data.ids, dataset)

    def __repr__(self) -> str:
        s = self.summary
        return (f"RebalanceResult({len(self.data)} images, density={self.settings.get('density')!r}, "
                f"{len(self.groups)} up-weighted group(s), ESS {s.ess:.0f} ({s.ess_fraction:.0%}), "
                f"weights {self.weights.min():.2f}..{self.weights.max():.2f}, {len(self.warnings)} warning(s))")

    def table(self) -> pa.Table:
        """Every input row with weight, rarity and resample_count; synthetic rows after them."""
        n = len(self.data)
        table = image_table(
            self.data,
            {
                "weight": self.weights,
                "rarity": self.rarity,
                "resample_count": self.resample_counts(),
                "worst_fit": pa.nulls(n, pa.bool_()) if self.worst_fit is None else self.worst_fit,
                "synthetic": np.zeros(n, dtype=bool),
                "source_id": pa.nulls(n, pa.string()),
                "neighbour_id": pa.nulls(n, pa.string()),
            },
        )
        if self.synthetic is None:
            return table
        m = len(self.synthetic)
        extra = image_table(
            self.synthetic,
            {
                "weight": pa.nulls(m, pa.float64()),
                "rarity": pa.nulls(m, pa.int64()),
                "resample_count": np.zeros(m, dtype=np.int64),
                "worst_fit": pa.nulls(m, pa.bool_()),
                "synthetic": np.ones(m, dtype=bool),
                "source_id": [self.data.ids[i] for i in self.synthetic_anchor],
                "neighbour_id": [self.data.ids[i] for i in self.synthetic_neighbour],
            },
            index=pa.nulls(m, pa.int64()),
        )
        return pa.concat_tables([table, extra.cast(table.schema)])

    def to_pandas(self):
        """`table()` as a pandas DataFrame: synthetic rows' null index and rarity stay <NA> in Int64 columns."""
        return to_pandas(self.table())

    def resampled_table(self) -> pa.Table:
        """The weighted resample itself: one row per draw, in draw order."""
        return image_table(self.data.subset(self.resampled), index=self.resampled)

    def write(self, path, *, command: str | None = None, resampled_path=None) -> pa.Table:
        """Write the table (and the resample, when `resampled_path` is given) atomically."""
        meta = {"version": __version__, "job": "rebalance", "command": command, **self.settings,
                "summary": self.summary.to_dict(), "upweighted_groups": self.groups, "worst_fit": self.worst_fit_report,
                "warnings": self.warnings}
        table = self.table()
        names = self.data.class_names
        outputs = [(table, path, meta, names)]
        if resampled_path is not None:
            outputs.append((self.resampled_table(), resampled_path, {**meta, "job": "rebalance-resample"}, names))
        write_tables(outputs)  # both files or neither
        return table


@torch.inference_mode()
def encode_images(model: GenerativeModel, images: torch.Tensor, *, batch_size: int = 1024) -> np.ndarray:
    """[N, d] latent features (posterior means) of uint8 images, in batches."""
    if "features" not in model.capabilities():
        raise GenaugError(f"model family '{model.name}' has no feature space to rebalance in (needs features)")
    return model_features(model, images, batch_size=batch_size)


def rebalance(
    data: ImageSet,
    *,
    model: GenerativeModel | str | os.PathLike | None = None,
    family: str = "vae",
    model_options: dict | None = None,
    train_config: TrainConfig | None = None,
    density: str = DEFAULT_METHOD,
    bins: int = DEFAULT_BINS,
    alpha: float | None = DEFAULT_ALPHA,
    aggregate: str = DEFAULT_AGGREGATE,
    components: int | None = None,
    fit_boost: float = 1.0,
    fit_share: float = DEFAULT_FIT_SHARE,
    per_class: bool = False,
    size: int | None = None,
    synthesize: int = 0,
    seed: int = 0,
    console=AUTO,
) -> RebalanceResult:
    """Weights that up-weight images from rare groups (or sparse regions) of a model's latent space.

    The default density, `clusters`, draws every k-means cluster of the
    model's features equally, so a rare group with a cluster of its own is
    up-weighted and images within a cluster keep equal weights (see
    `latent_density`). Whatever the density, the clusters (with
    `density="mixture"`, the components; otherwise a mixture's) whose images are
    drawn at least UPWEIGHTED times as often as under uniform sampling are
    listed in `result.groups` (name, size, shares, example ids) and in the
    output metadata; `result.warnings` names degenerate (low effective
    sample size) and near-uniform weights, each with a fix.

    With `fit_boost` > 1 (off by default; needs a family with a likelihood),
    the worst-fitted `fit_share` of the images (by the model's `complexity`
    score, within each label with `per_class`) are also drawn `fit_boost`
    times as often (`worst_fit_weights`, e.g. DEFAULT_FIT_BOOST = 3): a rare
    group the features fold into a common cluster is still fitted badly. It
    lifts whatever fits worst, corrupt images included (drop those first,
    `detect_outliers`), and lowers a rare group the model fits well.
    `result.worst_fit` marks the boosted images (also the `worst_fit`
    column), `result.fit_scores` holds the scores and the metadata's
    `worst_fit` the count and the worst ids.

    Without `model`, a `family` model is trained on `data` first, on every
    image (`REBALANCE_TRIM` = 0: trimming would push a rare group, the worst
    fit, out of the latent space it is judged in). `size` rows (default N) are
    resampled with the weights. `synthesize` adds that many latent-SMOTE
    images: a copy of the model is first fine-tuned on the weighted resample
    (DB-VAE's adaptive resampling) so its decoder has learned the rare
    regions, then points between rare neighbours are decoded; the anchors
    are the rarest 10% by weight (for `clusters` and `mixture`, whose
    weights tie within a group, the members of the up-weighted groups and
    the worst-fitted images), each drawn in proportion to its weight. `per_class` finds groups and weights within
    each label.
    """
    console = resolve_console(console)
    data = as_imageset(data)
    # Check the cheap things before training a model.
    _check_choice("density", density, METHODS)
    _check_choice("aggregate", aggregate, AGGREGATES)
    if alpha is not None:
        _check_alpha(alpha)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise GenaugError(f"--bins must be an integer >= 2, got {bins!r}")
    if components is not None:
        _check_components(components, max(len(data), 1))
    fit_boost = _check_fit_boost(fit_boost)
    _check_fit_share(fit_share)
    if per_class and data.labels is None:
        raise GenaugError("--per-class needs labelled data")
    if synthesize < 0:
        raise GenaugError(f"--synthesize must be >= 0, got {synthesize}")
    check_fits_in_memory(synthesize, data.shape, "--synthesize")
    size = len(data) if size is None else size
    if size < 1:
        raise GenaugError(f"--size must be at least 1, got {size}")
    config = train_config or TrainConfig()
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    # What the job needs of the family is checked before any training.
    cls = get_family(family) if model is None else type(model)
    cls.require("features", job="rebalance")
    if synthesize:
        cls.require("decode", job="rebalance --synthesize")
    if fit_boost > 1:
        cls.require("nll", job="rebalance --fit-boost")
    if model is None:
        trimmed = replace(config, trim_fraction=REBALANCE_TRIM if config.trim_fraction is None else config.trim_fraction)
        model = train_on(new_model(data, family, model_options=model_options, seed=config.seed), data, trimmed, console)
    fit = None
    if fit_boost > 1:
        raw = score_images(model, data.images, with_background=False, with_features=True, seed=seed, console=console)
        z, fit = raw.features, raw.bits_per_dim - raw.png_bits_per_dim
    else:
        z = encode_images(model, data.images)
    weights = sampling_weights(
        z, labels=data.labels, per_class=per_class, method=density, bins=bins, alpha=alpha, aggregate=aggregate,
        seed=seed, components=components,
    )
    group_of, group_names = _job_groups(z, data, per_class, density, components, seed)
    groups = upweighted_groups(weights, group_of, group_names, data.ids)
    worst = worst_report = before_fit = None
    if fit is not None:
        before_fit = (summary(weights), groups)
        labels = data.labels if per_class else None
        worst = worst_fitted(fit, fit_share, labels)
        weights = _boosted(weights, worst, fit_boost, labels)
        worst_report = _worst_fit_report(fit, worst, fit_boost, data.ids)
        groups = upweighted_groups(weights, group_of, group_names, data.ids)
    weight_summary = summary(weights)
    result = RebalanceResult(
        data=data,
        latents=z,
        weights=weights,
        rarity=rarity_rank(weights),
        resampled=resample(weights, size, seed=seed),
        summary=weight_summary,
        groups=groups,
        fit_scores=fit,
        worst_fit=worst,
        worst_fit_report=worst_report,
        warnings=weight_warnings(weight_summary, groups, before_fit=before_fit),
        settings={
            "model": model.name,
            "model_hash": model_hash(model),
            "density": density,
            "bins": bins,
            "alpha": default_alpha(density, aggregate) if alpha is None else alpha,
            "aggregate": aggregate,
            "components": group_count(len(z), components),
            "fit_boost": fit_boost,
            "fit_share": fit_share if fit_boost > 1 else None,
            "per_class": per_class,
            "size": size,
            "synthesize": synthesize,
            "seed": seed,
        },
    )
    if synthesize:
        # Group weights tie within a group, so the rarest-decile rule would take a
        # whole common group: anchor on the up-weighted groups' members instead.
        anchors = None
        if density in GROUP_METHODS and groups:
            anchors = np.isin(group_of, [group_names.index(g["group"]) for g in groups])
        if worst is not None and anchors is not None:
            anchors |= worst  # rare images inside common groups, which only the fit finds
        _add_synthetic(result, model, synthesize, replace(config, trim_fraction=0.0), seed, console, anchors)
    warn_all(result.warnings)
    return result


def _worst_fit_report(fit: np.ndarray, worst: np.ndarray, boost: float, ids: list[str]) -> dict:
    """The worst-fitted images for the output metadata: how many, their boost, the worst few ids."""
    members = np.flatnonzero(worst)
    top = members[np.argsort(-fit[members], kind="stable")[:EXAMPLES]]
    return {"size": int(members.size), "share": round(members.size / len(fit), 4), "boost": boost,
            "score": "complexity", "examples": [ids[i] for i in top]}


def _job_groups(z: np.ndarray, data: ImageSet, per_class: bool, density: str, components: int | None, seed: int):
    """(group index [N], group names) for the report: the density's own groups, else a mixture's;
    within each label with `per_class`."""
    method = density if density in GROUP_METHODS else "mixture"
    labels = data.labels if per_class else np.zeros(len(z), dtype=np.int64)
    group_of, names = np.empty(len(z), dtype=np.int64), []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        g = _groups_of(z[members], method, components, seed)
        group_of[members] = g + len(names)
        prefix = ""
        if per_class:
            known = data.class_names and 0 <= label < len(data.class_names)
            prefix = f"{data.class_names[label] if known else label} / "
        names += [f"{prefix}group {k}" for k in range(int(g.max()) + 1)]
    return group_of, names


def _groups_of(z: np.ndarray, method: str, components: int | None, seed: int) -> np.ndarray:
    if len(z) < 2:
        return np.zeros(len(z), dtype=np.int64)
    return latent_groups(z, method=method, components=min(components or DEFAULT_COMPONENTS, len(z)), seed=seed)[0]


def _add_synthetic(result: RebalanceResult, model: GenerativeModel, n: int, config, seed: int, console,
                   anchors: np.ndarray | None) -> None:
    """Fine-tune a copy of `model` on the weighted data, then decode latent-SMOTE points."""
    data = result.data
    tuned = train_on(copy.deepcopy(model), data, config, console, sample_weights=torch.from_numpy(result.weights))
    z = encode_images(tuned, data.images)
    labels = data.labels
    new_z, anchor, neighbour = latent_smote(z, result.weights, n, labels=labels, rare=anchors, seed=seed)
    y = None
    if tuned.num_classes > 0 and labels is not None:
        y = torch.from_numpy(labels[anchor]).to(tuned.device)
    with torch.inference_mode():
        images = tuned.decode(torch.from_numpy(new_z).float().to(tuned.device), y).cpu()
    prefix = f"smote-{result.settings['model_hash'][:8]}-s{seed}"
    result.synthetic = ImageSet(
        images=images,
        labels=None if labels is None else labels[anchor],
        class_names=data.class_names,
        ids=[f"{prefix}-{i:06d}" for i in range(n)],
        source="latent-smote",
    )
    result.synthetic_anchor, result.synthetic_neighbour = anchor, neighbour
