"""Where is the rare group? Every unsupervised signal rebalancing could use, on the realistic tasks.

    python benchmarks/rebalance_signals.py --emoji-dir ../shared/data            # seeds 0-2, ~13 min
    python benchmarks/rebalance_signals.py --emoji-dir DIR --tasks cast --seeds 1

For each task of `rebalance_tasks.py` (a rare group of 2% of the training
images) and seed, one VAE is trained as `genaug.rebalance` trains its
feature model (every image, 1 minute), then the rare group is looked for
without labels, in three kinds of signal:

* the feature space (posterior means, standardised): the rare group's
  10-nearest-neighbour purity (share of its neighbours that are rare:
  is it a group at all?), the median k-th neighbour distance of rare over
  common images (is it sparser than the rest, which density methods need?),
  and the largest share of it that HDBSCAN puts in one cluster of its own
  (>= 80% rare);
* the default weights (`clusters`) and k-means into finer partitions (32);
* how badly the model fits each image (JTT-style, "Just Train Twice",
  Liu et al. 2021): the AUROC of `complexity` (bits/dim minus PNG
  bits/dim) for rare vs common, and the rare/common weight ratio and
  effective sample size when the worst-fitted 10% are drawn 5x as often,
  alone and on top of the default weights (3x).

Weights only: no classifier (`bench_rebalance.py` measures that).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.cluster import HDBSCAN
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from genaug.fit import new_model, train_on
from genaug.rebalance import _standardise, effective_sample_size, sampling_weights
from genaug.scoring import score_images
from genaug.train import TrainConfig
from rebalance_tasks import TASKS, build
from tables import print_table

WORST_SHARE = 0.1
PURE = 0.8  # an HDBSCAN cluster counts as the rare group's own when this share of it is rare


def ratio(w: np.ndarray, rare: np.ndarray) -> str:
    return f"{w[rare].mean() / w[~rare].mean():.1f}x / {effective_sample_size(w) / len(w):.0%}"


def signals(task: str, seed: int, emoji_dir: Path, time_limit: float) -> dict:
    t = build(emoji_dir, "google", task, seed)
    rare = t.rare
    config = TrainConfig(progress=False, seed=seed, time_limit=time_limit, trim_fraction=0.0)
    model = train_on(new_model(t.train, "vae", seed=seed), t.train, config, None)
    raw = score_images(model, t.train.images, with_features=True)
    z = _standardise(raw.features)
    dist, idx = NearestNeighbors(n_neighbors=121).fit(z).kneighbors(z)
    row = {"task": task, "seed": seed, "10-NN purity": rare[idx[rare][:, 1:11]].mean()}
    for k in (10, 50, 120):
        row[f"r_{k} rare/common"] = np.median(dist[rare, k]) / np.median(dist[~rare, k])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # sklearn 1.9: HDBSCAN's `copy` default
        labels = HDBSCAN(min_cluster_size=max(5, round(0.01 * len(z))), min_samples=5).fit_predict(z)
    own = [np.sum(rare & (labels == c)) for c in range(labels.max() + 1)
           if rare[labels == c].mean() >= PURE]
    row["HDBSCAN own cluster"] = (max(own) if own else 0) / rare.sum()
    clusters = sampling_weights(raw.features, seed=seed)
    row["clusters (default)"] = ratio(clusters, rare)
    row["clusters, 32"] = ratio(sampling_weights(raw.features, seed=seed, components=32), rare)
    complexity = raw.bits_per_dim - raw.png_bits_per_dim
    row["complexity AUROC"] = roc_auc_score(rare, complexity)
    worst = complexity >= np.quantile(complexity, 1 - WORST_SHARE)
    row["worst-fit 10% x5"] = ratio(np.where(worst, 5.0, 1.0), rare)
    row["clusters x worst-fit x3"] = ratio(clusters * np.where(worst, 3.0, 1.0), rare)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emoji-dir", type=Path, required=True, help="folder with emoji-google-32.npz")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--time-limit", type=float, default=1.0, help="VAE training minutes (default 1)")
    args = parser.parse_args()
    rows = []
    for seed in range(args.seeds):
        for task in args.tasks:
            start = time.perf_counter()
            rows.append(signals(task, seed, args.emoji_dir, args.time_limit))
            print(f"{task} seed {seed}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
