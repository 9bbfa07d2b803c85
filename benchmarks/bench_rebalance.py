"""Rebalancing and synthesis benchmark: does genaug help a downstream classifier?

    python benchmarks/bench_rebalance.py --emoji-dir ../shared/data   # the figures in benchmarks/README.md
    python benchmarks/bench_rebalance.py --emoji-dir DIR --parts emoji --tasks night --seeds 1   # quicker

0. Realistic tasks (`--emoji-dir`, see `rebalance_tasks.py`): emoji with a
   rare group of 2% of the training images: dark skin tones (real), or a
   constructed attribute (night: a quarter turn and dark; cast: a blue
   colour cast; negative: 255 - x). A small CNN learns the emoji category with uniform
   sampling, with oracle weights (each group, rare and common, drawn
   equally: the true group labels), with the weights of every density
   method on the same latents (one trimmed VAE per task and seed, trained
   by `genaug.rebalance` as a user would), and with the default weights
   plus `--synthesize` latent-SMOTE images. Printed per task: the rare
   group's mean weight over the common group's, its share of the draws,
   the effective sample size, and the classifier's accuracy on the rare and
   on the common test group. Mean ± std over seeds.
1. Constructed bias. scikit-learn's digits, split 70/30 per seed. In the
   training split 2% of the images carry a rare attribute (inverted:
   255 - x). A small CNN learns the digit class three ways: on the raw
   data, rebalanced (sampled with genaug's DB-VAE weights), and rebalanced +
   synthesized (plus `--synthesize` latent-SMOTE images of the rare
   regions). Test: the held-out split, accuracy on its inverted copy (the
   rare group), on the plain images (common group), and overall at the
   training mix (2% rare). Mean ± std over seeds.
2. Classification accuracy score (CAS, Ravuri & Vinyals 2019). For each
   family that samples, a class-conditional model is fitted on the training
   split; a classifier trained only on its samples is tested on the real
   test split (next to the same classifier trained on the real data).
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import genaug
from genaug.data.imageset import ImageSet
from genaug.models.registry import available_families, get_family
from genaug.rebalance import DEFAULT_METHOD, METHODS, effective_sample_size, sampling_weights, worst_fit_weights
from genaug.train import TrainConfig
from rebalance_tasks import TASKS, build
from tables import print_table

RARE_SHARE = 0.02


def classifier(num_classes: int = 10, channels: int = 1, size: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2) if size > 8 else nn.Identity(), nn.Flatten(),
        nn.Linear(64 * (size // 2 // (2 if size > 8 else 1)) ** 2, 128), nn.ReLU(), nn.Linear(128, num_classes),
    )


def train_classifier(images, labels, *, weights=None, steps=600, seed=0, num_classes=10) -> nn.Module:
    """A fixed budget of SGD steps; `weights` switch sampling to genaug's weights."""
    torch.manual_seed(seed)
    net = classifier(num_classes, images.shape[1], images.shape[-1])
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    x = images.float() / 255.0
    y = torch.as_tensor(labels)
    p = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    for _ in range(steps):
        idx = torch.randint(len(x), (64,), generator=g) if p is None else torch.multinomial(p, 64, True, generator=g)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.inference_mode()
def accuracy(net, images, labels) -> float:
    return float((net(images.float() / 255.0).argmax(1).numpy() == labels).mean())


def biased_split(seed: int):
    digits = genaug.load_images("digits")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(digits))
    n_train = int(0.7 * len(digits))
    train, test = digits.subset(perm[:n_train]), digits.subset(perm[n_train:])
    rare = np.zeros(len(train), dtype=bool)
    rare[rng.choice(len(train), int(round(RARE_SHARE * len(train))), replace=False)] = True
    images = train.images.clone()
    images[torch.from_numpy(rare)] = 255 - images[torch.from_numpy(rare)]
    biased = ImageSet(images, train.labels, train.class_names, source="digits-biased")
    return biased, rare, test


def bias_experiment(seed: int, n_synth: int) -> list[dict]:
    train, rare, test = biased_split(seed)
    t0 = time.perf_counter()
    result = genaug.rebalance(train, synthesize=n_synth, seed=seed, train_config=genaug.TrainConfig(progress=False, seed=seed))
    seconds = time.perf_counter() - t0
    test_rare = 255 - test.images
    mix = RARE_SHARE

    def evaluate(name, net, extra=None):
        acc_rare = accuracy(net, test_rare, test.labels)
        acc_common = accuracy(net, test.images, test.labels)
        return {
            "seed": seed,
            "training data": name,
            "rare acc": acc_rare,
            "common acc": acc_common,
            "overall acc": mix * acc_rare + (1 - mix) * acc_common,
            **(extra or {}),
        }

    rows = [evaluate("raw", train_classifier(train.images, train.labels, seed=seed))]
    rows.append(
        evaluate(
            "rebalanced (weights)",
            train_classifier(train.images, train.labels, weights=result.weights, seed=seed),
            {"rare weight ratio": result.weights[rare].mean() / result.weights[~rare].mean(),
             "rare share after": result.weights[rare].sum() / result.weights.sum()},
        )
    )
    synth = result.synthetic
    images = torch.cat([train.images, synth.images])
    labels = np.concatenate([train.labels, synth.labels])
    # Synthetic rows are drawn like the rare images they came from.
    weights = np.concatenate([result.weights, np.full(len(synth), np.median(result.weights[result.weights > 1]))])
    rows.append(evaluate("rebalanced + synthesized", train_classifier(images, labels, weights=weights, seed=seed)))
    rows[0]["rebalance s"] = seconds
    return rows


def emoji_experiment(emoji_dir: Path, style: str, task: str, seed: int, n_synth: int, train: TrainConfig,
                     steps: int, methods: list[str], boosts: list[float]) -> list[dict]:
    """Every weighting on one task and seed; one row per training-data variant."""
    t = build(emoji_dir, style, task, seed)
    rare, k = t.rare, len(t.train.class_names)
    start = time.perf_counter()
    # With boosts, the job runs with the first (it returns the fit scores the others reuse); the
    # default (boost off) is the density alone, recomputed from the same latents.
    boosts = [b for b in boosts if b > 1]  # 1 = the density alone, always in the table
    boost = boosts[0] if boosts else 1.0
    result = genaug.rebalance(t.train, synthesize=n_synth, seed=seed, train_config=replace(train, seed=seed),
                              fit_boost=boost)
    seconds = time.perf_counter() - start
    oracle = np.where(rare, 0.5 / rare.mean(), 0.5 / (1 - rare.mean()))
    weights = {"uniform": None, "oracle (group labels)": oracle}
    fit = result.fit_scores
    for method in methods:
        w = sampling_weights(result.latents, method=method, seed=seed)
        weights[method + (" (default)" if method == DEFAULT_METHOD else "")] = w
        for b in boosts:
            weights[f"{method} x worst-fit {b:g}"] = worst_fit_weights(w, fit, boost=b)
    if boosts:
        weights[f"worst-fit {max(boosts):g} alone"] = worst_fit_weights(np.ones(len(fit)), fit, boost=max(boosts))
    if DEFAULT_METHOD not in methods:
        weights["default"] = sampling_weights(result.latents, method=DEFAULT_METHOD, seed=seed)
    rows = []

    def evaluate(name, net, w):
        row = {"task": f"{style} {task}", "seed": seed, "training data": name,
               "rare acc": accuracy(net, t.test_rare.images, t.test_rare.labels),
               "common acc": accuracy(net, t.test_common.images, t.test_common.labels)}
        if w is not None:
            row.update({"rare weight ratio": w[rare].mean() / w[~rare].mean(), "rare share": w[rare].sum() / w.sum(),
                        "ESS share": effective_sample_size(w) / len(w)})
        rows.append(row)

    for name, w in weights.items():
        evaluate(name, train_classifier(t.train.images, t.train.labels, weights=w, seed=seed, steps=steps, num_classes=k), w)
    if result.synthetic is not None:
        synth = result.synthetic
        w = np.concatenate([result.weights, np.full(len(synth), np.median(result.weights[result.weights > 1]))])
        net = train_classifier(torch.cat([t.train.images, synth.images]), np.concatenate([t.train.labels, synth.labels]),
                               weights=w, seed=seed, steps=steps, num_classes=k)
        evaluate(("default" if boost == 1 else f"{DEFAULT_METHOD} x worst-fit {boost:g}")
                 + f" + {len(synth)} synthesized", net, None)
    rows[0]["rebalance s"] = seconds
    print(f"[{time.strftime('%H:%M:%S')}] {style} {task} seed {seed}: "
          + "; ".join(f"{r['training data']} rare {r['rare acc']:.3f} common {r['common acc']:.3f}"
                      + (f" ratio {r['rare weight ratio']:.2f}" if "rare weight ratio" in r else "") for r in rows),
          file=sys.stderr, flush=True)
    return rows


def cas_experiment(seed: int, per_class: int) -> list[dict]:
    digits = genaug.load_images("digits")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(digits))
    n_train = int(0.7 * len(digits))
    clean, test = digits.subset(perm[:n_train]), digits.subset(perm[n_train:])
    rows = [{"seed": seed, "family": "real data", "CAS": accuracy(train_classifier(clean.images, clean.labels, seed=seed), test.images, test.labels)}]
    for family in available_families():
        if "sample" not in get_family(family).capabilities:
            continue
        model = genaug.fit(clean, family=family, conditional=True, train_config=genaug.TrainConfig(progress=False, seed=seed))
        samples = [genaug.synthesize(model, per_class, label=k, seed=seed + k).data for k in range(10)]
        images = torch.cat([s.images for s in samples])
        labels = np.concatenate([s.labels for s in samples])
        net = train_classifier(images, labels, seed=seed)
        rows.append({"seed": seed, "family": family, "CAS": accuracy(net, test.images, test.labels)})
    return rows


def summarise(rows: list[dict], key: str, metrics: list[str]) -> list[dict]:
    out = []
    for name in dict.fromkeys(r[key] for r in rows):
        group = [r for r in rows if r[key] == name]
        row = {key: name}
        for m in metrics:
            values = np.array([r[m] for r in group if m in r], dtype=float)
            if values.size:
                row[m] = f"{values.mean():.3f} ± {values.std():.3f}"
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--synthesize", type=int, default=200, help="latent-SMOTE images added")
    parser.add_argument("--per-class", type=int, default=150, help="samples per class for CAS")
    parser.add_argument("--emoji-dir", type=Path, help="folder with emoji-<style>-32.npz (the realistic tasks)")
    parser.add_argument("--styles", nargs="+", default=["google"], choices=["google", "twitter"])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--parts", nargs="+", default=["emoji", "digits", "cas"], choices=["emoji", "digits", "cas"])
    parser.add_argument("--time-limit", type=float, default=1.0, help="minutes of VAE training per task and seed")
    parser.add_argument("--trim", type=float, default=None, help="trimmed share for the VAE (default: rebalance's)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="VAE epochs instead of --time-limit (figures that do not depend on the machine's load)")
    parser.add_argument("--steps", type=int, default=600, help="classifier steps (batch 64)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="densities to compare (each alone and with the worst-fit boosts)")
    parser.add_argument("--boosts", nargs="*", type=float, default=[3.0],
                        help="worst-fit boosts to put on top of every density (none: densities alone)")
    args = parser.parse_args()
    train = TrainConfig(progress=False, time_limit=None if args.epochs else args.time_limit, epochs=args.epochs,
                        trim_fraction=args.trim)
    print(f"# {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    if "emoji" in args.parts:
        if args.emoji_dir is None:
            parser.error("the emoji part needs --emoji-dir (or leave it out with --parts digits cas)")
        print(f"\n## emoji tasks: category classifier, rare group 2% of training (mean ± std over {args.seeds} seeds; "
              f"VAE {f'{args.epochs} epochs' if args.epochs else f'{args.time_limit} min'}, "
              f"trim {args.trim if args.trim is not None else 'default'})")
        for style in args.styles:
            for task in args.tasks:
                rows = [r for s in range(args.seeds) for r in emoji_experiment(
                    args.emoji_dir, style, task, s, args.synthesize, train, args.steps, args.methods, args.boosts)]
                print(f"\n### {style} {task}\n")
                print_table(summarise(rows, "training data", ["rare acc", "common acc", "rare weight ratio", "rare share",
                                                                "ESS share", "rebalance s"]))
    if "digits" not in args.parts and "cas" not in args.parts:
        print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        return
    bias = [r for s in range(args.seeds) for r in bias_experiment(s, args.synthesize)] if "digits" in args.parts else []
    if bias:
        print("\n## downstream classifier on digits with 2% inverted images (mean ± std over seeds)\n")
        print_table(summarise(bias, "training data", ["rare acc", "common acc", "overall acc", "rare weight ratio",
                                                        "rare share after", "rebalance s"]))
    if "cas" not in args.parts:
        print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        return
    cas = [r for s in range(args.seeds) for r in cas_experiment(s, args.per_class)]
    print("\n## classification accuracy score: trained on samples only, tested on real digits\n")
    print_table(summarise(cas, "family", ["CAS"]))
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
