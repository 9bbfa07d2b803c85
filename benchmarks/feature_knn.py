"""A candidate score for issue #9: k-NN distance to the training images in the model's feature space.

    python benchmarks/feature_knn.py --emoji-dir ../shared/data [--seeds 0 1] [--epochs 30]

On bench_ood's reference-mode tasks (a category held out as novelty, the
other drawing style, photo crops vs emoji; both directions each), one VAE
per direction and seed is fitted with its background model (`fit(...,
llr=True)`), as `detect-outliers --model-path` would use it. Each test image
is then scored by `llr` (the default `auto`) and by the mean distance to its
k nearest training images in the VAE's features (posterior means,
standardised on the training images), for k = 1, 5, 20; and by the mean of
the ranks of `llr` and the 5-NN distance. Prints the AUROC of each, per
direction and the mean. Not yet a genaug score: this decides whether it
should become one (and `auto`).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from bench_ood import DEFAULT_NOVEL, build_tasks, category_index, load_emoji
from genaug import detect_outliers, fit
from genaug.scoring.rarity import model_features
from genaug.train import TrainConfig
from tables import print_table

NEIGHBOURS = (1, 5, 20)


def knn_distance(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    """Mean distance of each test row to its k nearest training rows, features standardised on `train`."""
    mean, sd = train.mean(0), train.std(0) + 1e-6
    index = NearestNeighbors(n_neighbors=k).fit((train - mean) / sd)
    return index.kneighbors((test - mean) / sd)[0].mean(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emoji-dir", type=Path, required=True, help="folder with emoji-<style>-32.npz")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=30, help="VAE epochs (fixed: figures independent of load)")
    parser.add_argument("--time-limit", type=float, default=4.0, help="minutes per model, a cap above the epochs")
    args = parser.parse_args()
    emoji = load_emoji(args.emoji_dir, quick=False)
    novel = [category_index(name, emoji["google"].categories) for name in DEFAULT_NOVEL]
    config = TrainConfig(progress=False, epochs=args.epochs, time_limit=args.time_limit)
    rows = []
    for seed in args.seeds:
        for task in build_tasks(emoji, novel, seed, ["novel", "style", "foreign"]):
            start = time.perf_counter()
            model = fit(task.train, family="vae", train_config=replace(config, seed=seed), llr=True)
            scores = {"llr (auto)": detect_outliers(task.test, model=model, score="llr").score}
            train, test = model_features(model, task.train.images), model_features(model, task.test.images)
            for k in NEIGHBOURS:
                scores[f"{k}-NN"] = knn_distance(train, test, k)
            scores["llr + 5-NN ranks"] = rankdata(scores["llr (auto)"]) + rankdata(scores["5-NN"])
            row = {"seed": seed, "task": task.task, "direction": task.direction}
            row.update({name: roc_auc_score(task.is_out, s) for name, s in scores.items()})
            rows.append(row)
            print(f"[{time.strftime('%H:%M:%S')}] seed {seed} {task.direction}: "
                  + ", ".join(f"{n} {v:.3f}" for n, v in row.items() if isinstance(v, float))
                  + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    names = [n for n in rows[0] if n not in ("seed", "task", "direction")]
    print("\nAUROC, reference mode (VAE features, k-NN to the training images):\n")
    print_table([*rows, {"seed": "mean", "task": "", "direction": "", **{n: np.mean([r[n] for r in rows]) for n in names}}])


if __name__ == "__main__":
    main()
