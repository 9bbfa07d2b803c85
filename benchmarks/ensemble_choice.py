"""Which combination of genaug's scores to make `ensemble` (and `auto`): offline, on bench_ood's saved scores.

    python benchmarks/bench_ood.py --emoji-dir ../shared/data --families vae --save-scores scores.npz
    python benchmarks/ensemble_choice.py scores.npz [more.npz ...] [--family vae] [--fdr 0.05]

Several files (runs of other seeds, `bench_ood.py --first-seed`) are pooled: AUROC is
averaged over the seeds, precision / recall listed per seed.

For every task direction saved (reference mode and self-audit) and every
candidate combination of the single scores, the combined score as genaug
computes `ensemble` (`genaug.scoring.ensemble.combine`: each component's
robust z against the reference, the calibration split's scores in
reference mode, the data's own in self-audit), then "mean" (the mean of the
z, genaug's rule) or "max" (the largest z). Prints AUROC per direction and
the mean, and of the flags genaug would raise on the combined score (BH at
`--fdr` over extended conformal p-values in reference mode, over the
self-audit tail p-values otherwise): precision and recall per direction.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from genaug.scoring.calibration import benjamini_hochberg, extended_conformal_p_values, tail_p_values
from genaug.scoring.ensemble import robust_z
from saved_scores import load_saved_scores
from tables import print_table

CANDIDATES = {
    "llr": ("mean", ["llr"]),
    "knn": ("mean", ["knn"]),
    "complexity": ("mean", ["complexity"]),
    "llr+knn": ("mean", ["llr", "knn"]),
    "max(llr, knn)": ("max", ["llr", "knn"]),
    "complexity+llr+knn": ("mean", ["complexity", "llr", "knn"]),
    "complexity+typicality+llr": ("mean", ["complexity", "typicality", "llr"]),
    "complexity+typicality+llr+knn": ("mean", ["complexity", "typicality", "llr", "knn"]),
}


def combined(rule: str, parts: list[np.ndarray], refs: list[np.ndarray]) -> np.ndarray:
    z = np.stack([robust_z(s, r) for s, r in zip(parts, refs)])
    return z.mean(axis=0) if rule == "mean" else z.max(axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", type=Path, nargs="+",
                        help="the .npz of bench_ood.py --save-scores (several: runs of other seeds, averaged)")
    parser.add_argument("--family", default="vae")
    parser.add_argument("--fdr", type=float, default=0.05)
    args = parser.parse_args()
    saved = load_saved_scores(args.scores)
    directions = sorted({tuple(k.split("|")[:3]) for k in saved if k.endswith("|is_out")})
    auroc, flags = defaultdict(dict), defaultdict(dict)
    for seed, task, direction in directions:
        prefix = f"{seed}|{task}|{direction}"
        truth = saved[f"{prefix}|is_out"]
        if not 0 < truth.sum() < len(truth):
            continue  # a clean set: no AUROC
        name = f"{direction} ({task})"
        for label, (rule, parts) in CANDIDATES.items():
            keys = [f"{prefix}|{args.family}/{p}|scored" for p in parts]
            if not all(k in saved for k in keys):
                continue
            scores = [saved[k] for k in keys]
            cal_keys = [k.replace("|scored", "|calibration") for k in keys]
            reference = all(k in saved for k in cal_keys)
            refs = [saved[k] for k in cal_keys] if reference else scores
            s = combined(rule, scores, refs)
            if reference:
                p = extended_conformal_p_values(combined(rule, [saved[k] for k in cal_keys], refs), s)
            else:
                p = tail_p_values(s)
            flagged = benjamini_hochberg(p, args.fdr)
            hits = int((flagged & truth).sum())
            auroc[name].setdefault(label, []).append(roc_auc_score(truth, s))
            flags[name].setdefault(label, []).append(f"{hits / max(flagged.sum(), 1):.2f} / {hits / truth.sum():.2f}")
    labels = [c for c in CANDIDATES if any(c in row for row in auroc.values())]
    rows = [{"direction": name, **{c: np.mean(row.get(c, np.nan)) for c in labels}} for name, row in auroc.items()]
    rows.append({"direction": "mean", **{c: np.nanmean([r[c] for r in rows]) for c in labels}})
    seeds = sorted({d[0] for d in directions})
    print(f"AUROC of each combination (robust z against the reference; mean or max), mean over seeds {seeds}:\n")
    print_table(rows)
    print(f"\nPrecision / recall of BH at fdr {args.fdr} on the combined score (one per seed):\n")
    print_table([{"direction": name, **{c: ", ".join(row.get(c, ["-"])) for c in labels}} for name, row in flags.items()])


if __name__ == "__main__":
    main()
