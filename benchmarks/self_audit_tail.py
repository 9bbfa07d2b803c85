"""Self-audit flags with and without the bound on the fitted tail, on the scores `bench_ood.py` saved.

    python benchmarks/bench_ood.py --emoji-dir ../shared/data --families vae --tasks photo grey clean \
        --save-scores scores.npz
    python benchmarks/self_audit_tail.py scores.npz [more.npz ...] [--fdr 0.05]

For every self-audit set and score saved (keys without calibration scores),
BH at `--fdr` over `genaug.scoring.calibration.tail_p_values` as genaug runs
it ("bounded": the fitted null may not put more of itself beyond the fit's
window than the data have there) and with the truncated fit alone
("truncated", `bounded=False`): precision, recall and count flagged per set
and seed (on a clean set every flag is false: the count). The last table
pools every set with outliers per score: mean precision (nothing flagged
counts as 1, as realised FDR 0), mean recall, and the clean sets' mean share
flagged.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from genaug.scoring.calibration import benjamini_hochberg, tail_p_values
from saved_scores import load_saved_scores
from tables import print_table

RULES = {"bounded": {}, "truncated": {"bounded": False}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", type=Path, nargs="+", help="the .npz of bench_ood.py --save-scores (several: pooled)")
    parser.add_argument("--fdr", type=float, default=0.05)
    args = parser.parse_args()
    saved = load_saved_scores(args.scores)
    rows, pooled = [], defaultdict(lambda: defaultdict(list))
    for key in sorted(k for k in saved if k.endswith("|scored")):
        seed, task, direction, method, _ = key.split("|")
        if f"{seed}|{task}|{direction}|{method}|calibration" in saved:
            continue  # reference mode: conformal p-values (benchmarks/conformal_tail.py)
        is_out = saved[f"{seed}|{task}|{direction}|is_out"].astype(bool)
        scores = saved[key]
        row = {"set": f"{task}: {direction}", "seed": seed, "score": method,
               "AUROC": roc_auc_score(is_out, scores) if is_out.any() else "-"}  # fmt: skip
        for rule, options in RULES.items():
            flags = benjamini_hochberg(tail_p_values(scores, **options), args.fdr)
            n, hits = int(flags.sum()), int((flags & is_out).sum())
            if is_out.any():
                precision = hits / n if n else 1.0
                row[rule] = f"{precision:.2f} / {hits / is_out.sum():.2f} ({n})"
                pooled[method][f"{rule} precision"].append(precision)
                pooled[method][f"{rule} recall"].append(hits / is_out.sum())
            else:
                row[rule] = f"{n} flagged"
                pooled[method][f"{rule} clean share"].append(n / len(scores))
        rows.append(row)
    print(f"Precision / recall (count flagged), BH at fdr {args.fdr}:\n")
    print_table(rows)
    print("\nPooled per score (sets with outliers: mean precision and recall; clean sets: mean share flagged):\n")
    print_table([{"score": method, **{k: float(np.mean(v)) for k, v in sorted(values.items())}}
                 for method, values in sorted(pooled.items())])  # fmt: skip


if __name__ == "__main__":
    main()
