"""A candidate score for issue #9: k-NN distance to the training images in the model's feature space.

    python benchmarks/feature_knn.py --emoji-dir ../shared/data [--seeds 0 1] [--epochs 30]
    python benchmarks/feature_knn.py --emoji-dir ../shared/data --self-audit   # choose self-audit's k

On bench_ood's reference-mode tasks (a category held out as novelty, the
other drawing style, photo crops vs emoji; both directions each), one VAE
per direction and seed is fitted with its background model (`fit(...,
llr=True)`), as `detect-outliers --model-path` would use it. Each test image
is then scored by `llr` (the default `auto`) and by the mean distance to its
k nearest training images in the VAE's features (posterior means,
standardised on the training images), for k = 1, 5, 20; and by the mean of
the ranks of `llr` and the 5-NN distance. Prints the AUROC of each, per
direction and the mean. (This chose the `knn` score's k in reference mode.)

With `--self-audit`, bench_ood's self-audit tasks (2% other-style drawings
injected, 2% photo crops among emoji and emoji among photo crops, and the
clean sets): two fold models per task as `detect_outliers` cross-fits them
(trimmed, each with its background model); each held-out image is scored by
`llr` and by its k-NN distance to the fold model's *training* folds in its
features, for several k, and flagged as self-audit flags (`tail_p_values`,
BH at 0.05). Prints AUROC, precision and recall, and the share flagged on
the clean sets: the training folds hold the injected outliers, so k must
reach past an outlier's own kind.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from bench_ood import DEFAULT_NOVEL, build_tasks, category_index, load_emoji, metrics
from genaug import detect_outliers, fit
from genaug.detect import DEFAULT_FOLDS, SELF_AUDIT_TRIM
from genaug.fit import new_model, train_background, train_on
from genaug.scoring import score_images
from genaug.scoring.calibration import benjamini_hochberg, tail_p_values
from genaug.scoring.knn import FeatureBank, bank_rows
from genaug.scoring.llr import DEFAULT_MUTATION_RATE
from genaug.scoring.rarity import model_features
from genaug.train import TrainConfig
from tables import print_table

NEIGHBOURS = (1, 5, 20)
AUDIT_NEIGHBOURS = (1, 5, 20, 50, 100)


def knn_distance(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    """Mean distance of each test row to its k nearest training rows, features standardised on `train`."""
    mean, sd = train.mean(0), train.std(0) + 1e-6
    index = NearestNeighbors(n_neighbors=k).fit((train - mean) / sd)
    return index.kneighbors((test - mean) / sd)[0].mean(axis=1)


def cross_fit_knn(data, config: TrainConfig) -> dict[str, np.ndarray]:
    """Out-of-fold `llr` and k-NN distances (k in AUDIT_NEIGHBOURS) to each fold model's training folds,
    cross-fitted as `genaug.detect.cross_fit_scores` does (same folds, trim and background models)."""
    n = len(data)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed)).numpy()
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[perm] = np.arange(n) % DEFAULT_FOLDS
    out = {name: np.empty(n) for name in ["llr", *(f"{k}-NN" for k in AUDIT_NEIGHBOURS)]}
    for f in range(DEFAULT_FOLDS):
        held_out, held_in = np.flatnonzero(fold_of == f), np.flatnonzero(fold_of != f)
        model = new_model(data, "vae", seed=config.seed)
        train_on(model, data.subset(held_in), config, None)
        train_background(model, data.subset(held_in), config, mutation_rate=DEFAULT_MUTATION_RATE)
        raw = score_images(model, data.subset(held_out).images, seed=config.seed)
        out["llr"][held_out] = raw.bits_per_dim - raw.background_bits_per_dim
        train = model_features(model, data.subset(held_in[bank_rows(held_in.size, config.seed)]).images)
        test = model_features(model, data.subset(held_out).images)
        for k in AUDIT_NEIGHBOURS:
            out[f"{k}-NN"][held_out] = FeatureBank.build(train, k).distance(test)
    return out


def self_audit(emoji, seeds: list[int], config: TrainConfig) -> None:
    rows = []
    for seed in seeds:
        for task in build_tasks(emoji, [], seed, ["injected", "photo", "clean"]):
            start = time.perf_counter()
            scores = cross_fit_knn(task.test, replace(config, seed=seed, trim_fraction=SELF_AUDIT_TRIM))
            row = {"seed": seed, "task": task.task, "direction": task.direction}
            for name, s in scores.items():
                m = metrics(task.is_out, s, benjamini_hochberg(tail_p_values(s), 0.05))
                if task.task == "clean":
                    row[name] = f"{m['flagged share']:.2%} flagged"
                else:
                    row[name] = f"{m['AUROC']:.3f} P {m['precision']:.2f} R {m['recall']:.2f}"
            rows.append(row)
            print(f"[{time.strftime('%H:%M:%S')}] seed {seed} {task.direction}: "
                  + "; ".join(f"{n} {v}" for n, v in list(row.items())[3:])
                  + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    print("\nSelf-audit, 2 folds: AUROC, precision and recall of BH at 0.05 on the tail p-values "
          "(clean sets: share flagged):\n")
    print_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emoji-dir", type=Path, required=True, help="folder with emoji-<style>-32.npz")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=30, help="VAE epochs (fixed: figures independent of load)")
    parser.add_argument("--time-limit", type=float, default=4.0, help="minutes per model, a cap above the epochs")
    parser.add_argument("--self-audit", action="store_true", help="the self-audit tasks instead (choose its k)")
    args = parser.parse_args()
    emoji = load_emoji(args.emoji_dir, quick=False)
    config = TrainConfig(progress=False, epochs=args.epochs, time_limit=args.time_limit)
    if args.self_audit:
        self_audit(emoji, args.seeds, config)
        return
    novel = [category_index(name, emoji["google"].categories) for name in DEFAULT_NOVEL]
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
