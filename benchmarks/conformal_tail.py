"""Exact vs extended conformal p-values on the reference-mode scores `bench_ood.py` saved.

    python benchmarks/bench_ood.py --emoji-dir ../shared/data --families vae --tasks novel style foreign \
        --seeds 3 --save-scores scores.npz
    python benchmarks/conformal_tail.py scores.npz [more.npz ...] [--fdr 0.05] [--min-shapes 0 0.1]

For every reference-mode direction and score with calibration scores saved,
BH at `--fdr` over the exact split-conformal p-values and over the extended
ones (`genaug.scoring.calibration.extended_conformal_p_values`, the default
of `detect-outliers --model-path`): recall, realised FDR (0 when nothing is
flagged) and count flagged, each the mean over the seeds saved, with the
score's AUROC. The last rows pool every direction: the mean realised FDR
(the quantity BH bounds) and recall. `--min-shapes`: the extended rule once
per floor under its fitted tail's shape (default: genaug's, only).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from genaug.scoring.calibration import (
    REFERENCE_MIN_SHAPE,
    benjamini_hochberg,
    conformal_p_values,
    extended_conformal_p_values,
)
from saved_scores import load_saved_scores
from tables import print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", type=Path, nargs="+", help="the .npz of bench_ood.py --save-scores (several: pooled)")
    parser.add_argument("--fdr", type=float, default=0.05)
    parser.add_argument("--min-shapes", type=float, nargs="+", default=[REFERENCE_MIN_SHAPE],
                        help=f"floors under the extended tail's shape to compare (default {REFERENCE_MIN_SHAPE})")
    args = parser.parse_args()
    rules = {"exact": conformal_p_values}
    for m in args.min_shapes:
        name = "extended" if len(args.min_shapes) == 1 else f"extended {m:g}"
        rules[name] = lambda cal, s, m=m: extended_conformal_p_values(cal, s, min_shape=m)
    saved = load_saved_scores(args.scores)
    runs = defaultdict(list)  # (task, direction, method) -> one dict per seed
    for key in [k for k in saved if k.endswith("|calibration")]:
        seed, task, direction, method, _ = key.split("|")
        is_out = saved[f"{seed}|{task}|{direction}|is_out"]
        scores, cal = saved[key.replace("|calibration", "|scored")], saved[key]
        run = {"AUROC": roc_auc_score(is_out, scores)}
        for rule, p_values in rules.items():
            flags = benjamini_hochberg(p_values(cal, scores), args.fdr)
            n = int(flags.sum())
            run[f"{rule} recall"] = flags[is_out].mean()
            run[f"{rule} FDR"] = (flags & ~is_out).sum() / n if n else 0.0
            run[f"{rule} flagged"] = n
        runs[(task, direction, method)].append(run)
    report(runs, rules)


def report(runs: dict, rules: dict) -> None:
    rows = []
    for (task, direction, method), seeds in sorted(runs.items()):
        rows.append({"task": task, "direction": direction, "score": method, "seeds": len(seeds),
                     **{k: float(np.mean([s[k] for s in seeds])) for k in seeds[0]}})  # fmt: skip
    print_table(rows)
    print()
    pooled = []
    for method in sorted({m for _, _, m in runs}):
        every = [s for (_, _, m), seeds in runs.items() if m == method for s in seeds]
        strong = [s for s in every if s["AUROC"] >= 0.95]
        pooled.append({"score": method, "runs": len(every),
                       **{f"{r} mean FDR": float(np.mean([s[f'{r} FDR'] for s in every])) for r in rules},
                       **{f"{r} mean recall": float(np.mean([s[f'{r} recall'] for s in every])) for r in rules},
                       "runs with AUROC >= 0.95": len(strong),
                       **{f"{r} recall there": float(np.mean([s[f'{r} recall'] for s in strong])) if strong else "-"
                          for r in rules}})  # fmt: skip
    print_table(pooled)


if __name__ == "__main__":
    main()
