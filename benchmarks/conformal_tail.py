"""Exact vs extended conformal p-values on the reference-mode scores `bench_ood.py` saved.

    python benchmarks/bench_ood.py --emoji-dir ../shared/data --families vae --tasks novel style foreign \
        --seeds 3 --save-scores scores.npz
    python benchmarks/conformal_tail.py scores.npz [--fdr 0.05]

For every reference-mode direction and score with calibration scores saved,
BH at `--fdr` over the exact split-conformal p-values and over the extended
ones (`genaug.scoring.calibration.extended_conformal_p_values`, the default
of `detect-outliers --model-path`): recall, realised FDR (0 when nothing is
flagged) and count flagged, each the mean over the seeds saved, with the
score's AUROC. The last rows pool every direction: the mean realised FDR
(the quantity BH bounds) and recall.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from genaug.scoring.calibration import benjamini_hochberg, conformal_p_values, extended_conformal_p_values
from tables import print_table

RULES = {"exact": conformal_p_values, "extended": extended_conformal_p_values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", type=Path, help="the .npz of bench_ood.py --save-scores")
    parser.add_argument("--fdr", type=float, default=0.05)
    args = parser.parse_args()
    saved = np.load(args.scores)
    runs = defaultdict(list)  # (task, direction, method) -> one dict per seed
    for key in saved.files:
        if not key.endswith("|calibration"):
            continue
        seed, task, direction, method, _ = key.split("|")
        is_out = saved[f"{seed}|{task}|{direction}|is_out"]
        scores, cal = saved[key.replace("|calibration", "|scored")], saved[key]
        run = {"AUROC": roc_auc_score(is_out, scores)}
        for rule, p_values in RULES.items():
            flags = benjamini_hochberg(p_values(cal, scores), args.fdr)
            n = int(flags.sum())
            run[f"{rule} recall"] = flags[is_out].mean()
            run[f"{rule} FDR"] = (flags & ~is_out).sum() / n if n else 0.0
            run[f"{rule} flagged"] = n
        runs[(task, direction, method)].append(run)
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
                       **{f"{r} mean FDR": float(np.mean([s[f'{r} FDR'] for s in every])) for r in RULES},
                       **{f"{r} mean recall": float(np.mean([s[f'{r} recall'] for s in every])) for r in RULES},
                       "runs with AUROC >= 0.95": len(strong),
                       **{f"{r} recall there": float(np.mean([s[f'{r} recall'] for s in strong])) if strong else "-"
                          for r in RULES}})  # fmt: skip
    print_table(pooled)


if __name__ == "__main__":
    main()
