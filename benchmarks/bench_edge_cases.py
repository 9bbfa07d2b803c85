"""Edge cases vs outliers: does `detect-outliers` tell a rare but valid group from foreign images?

    python benchmarks/bench_edge_cases.py --emoji-dir ../shared/data
    python benchmarks/bench_edge_cases.py --emoji-dir DIR --seeds 3 --time-limit 2 --styles google

Data, per style and seed (self-audit, as a user auditing their own set):

* common: every emoji without a skin tone (1,911 images);
* rare, valid: emoji in the darkest skin tone (tone 5), `--rare-share` of
  the set (default 2%). Their default-tone (yellow) twins are among the
  common images: same drawings, rare colour, the "dark skin in a dataset of
  mostly default emoji" case rebalancing exists for;
* foreign: `--foreign-share` (default 2%) 32x32 crops of scikit-learn's two
  sample photographs (see `bench_ood.photo_crops`).

What a user wants: the foreign images flagged `outlier`, the rare group
*not* flagged but marked `edge-case` far more often than the common images.
Printed per group: the share in each `category`, median `rarity`; and AUROC
of the outlier score for foreign vs the rest, of the outlier score for rare
vs common (low is right: rare is not foreign), and of `rarity` for rare vs
common among the images not flagged (high is right).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from bench_ood import photo_crops
from genaug.data.imageset import ImageSet
from genaug.detect import detect_outliers
from genaug.train import TrainConfig

GROUPS = ("common", "rare", "foreign")
RARE_TONE = 5


def build(emoji_dir: Path, style: str, seed: int, rare_share: float, foreign_share: float):
    """(ImageSet, group index per image: 0 common, 1 rare, 2 foreign)."""
    with np.load(emoji_dir / f"emoji-{style}-32.npz", allow_pickle=False) as d:
        x = torch.from_numpy(d["x"]).permute(0, 3, 1, 2).contiguous()
        y, tone, categories = d["y"].astype(np.int64), d["tone"], [str(c) for c in d["categories"]]
    rng = np.random.default_rng([seed, 3])
    common = np.flatnonzero(tone == 0)
    n_rare = int(round(rare_share * len(common) / (1 - rare_share - foreign_share)))
    n_foreign = int(round(foreign_share * len(common) / (1 - rare_share - foreign_share)))
    rare = np.sort(rng.choice(np.flatnonzero(tone == RARE_TONE), size=n_rare, replace=False))
    photos = photo_crops(n_foreign, seed)
    images = torch.cat([x[torch.from_numpy(common)], x[torch.from_numpy(rare)], photos])
    labels = np.concatenate([y[common], y[rare], np.full(n_foreign, len(categories))])
    group = np.repeat([0, 1, 2], [len(common), n_rare, n_foreign])
    order = rng.permutation(len(group))  # groups interleaved, as in a real folder
    data = ImageSet(images[torch.from_numpy(order)], labels[order], [*categories, "photo"], source=f"{style}-edge")
    return data, group[order]


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(positive, score)) if 0 < positive.sum() < len(positive) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emoji-dir", type=Path, required=True)
    parser.add_argument("--styles", nargs="+", default=["google", "twitter"], choices=["google", "twitter"])
    parser.add_argument("--family", default="vae")
    parser.add_argument("--score", default="auto")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=1.0, help="training minutes per fold model")
    parser.add_argument("--rare-share", type=float, default=0.02)
    parser.add_argument("--foreign-share", type=float, default=0.02)
    args = parser.parse_args()

    from tables import print_table

    print(f"# {args.family}, score {args.score}, self-audit, {args.time_limit} min per fold model, "
          f"rare (tone {RARE_TONE}) {args.rare_share:.0%}, foreign (photo crops) {args.foreign_share:.0%}, "
          f"seeds {args.seeds}\n")
    rows = []
    for style in args.styles:
        per_seed = []
        for seed in range(args.seeds):
            data, group = build(args.emoji_dir, style, seed, args.rare_share, args.foreign_share)
            start = time.perf_counter()
            result = detect_outliers(data, family=args.family, score=args.score,
                                     train_config=TrainConfig(time_limit=args.time_limit, seed=seed, progress=False))
            seconds = time.perf_counter() - start
            cat = np.asarray(result.category)
            kept = ~result.is_outlier
            measured = {
                "AUROC score foreign": auroc(group == 2, result.score),
                "AUROC score rare vs common": auroc(group[group < 2] == 1, result.score[group < 2]),
                "AUROC rarity rare vs common": auroc(group[kept & (group < 2)] == 1, result.rarity[kept & (group < 2)]),
                "seconds": seconds,
            }
            for g, name in enumerate(GROUPS):
                for c in ("outlier", "edge-case"):
                    measured[f"{name} {c}"] = float(np.mean(cat[group == g] == c))
            per_seed.append(measured)
            print(f"[{time.strftime('%H:%M:%S')}] {style} seed {seed}: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in measured.items()), file=sys.stderr, flush=True)
        n = {name: int((group == g).sum()) for g, name in enumerate(GROUPS)}
        rows.append({"style": style, **{f"n {k}": v for k, v in n.items()},
                     **{k: float(np.nanmean([m[k] for m in per_seed])) for k in per_seed[0]}})
    # Measures down, styles across: the measures are many.
    print_table([{"measure": k, **{r["style"]: r[k] for r in rows}} for k in rows[0] if k != "style"])


if __name__ == "__main__":
    main()
