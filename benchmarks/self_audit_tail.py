"""Self-audit flags with and without the bound on the fitted tail, on the scores `bench_ood.py` saved.

    python benchmarks/bench_ood.py --emoji-dir ../shared/data --families vae --tasks photo grey clean \
        --save-scores scores.npz
    python benchmarks/self_audit_tail.py scores.npz [more.npz ...] [--fdr 0.05]
    python benchmarks/self_audit_tail.py scores.npz --rules bounded "tail 0.1" "shape >= -0.2" \
        --combine llr typicality --intersect llr complexity

For every self-audit set and score saved (keys without calibration scores),
BH at `--fdr` over `genaug.scoring.calibration.tail_p_values` as genaug runs
it ("bounded": the fitted null may not put more of itself beyond the fit's
window than the data have there) and with the truncated fit alone
("truncated", `bounded=False`): precision, recall and count flagged per set
and seed (on a clean set every flag is false: the count). The last table
pools every set with outliers per score: mean precision (nothing flagged
counts as 1, as realised FDR 0), mean recall, and the clean sets' mean share
flagged. `--rules` puts other null fits beside them (another tail window
or trim, or shapes below 0: lighter tails with an end point), and
`--combine` flags by the Bonferroni min-p of several scores of one model,
`--intersect` by their max-p (an image flagged only where every score finds
it extreme: the intersection-union test, valid without a correction).
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

# Each rule: keyword arguments of `tail_p_values`. "bounded" is what genaug runs.
RULES = {
    "bounded": {},
    "truncated": {"bounded": False},
    "tail 0.1": {"tail": 0.1},
    "tail 0.3": {"tail": 0.3},
    "trim 0.03": {"trim": 0.03},
    "trim 0.08": {"trim": 0.08},
    "shape >= -0.2": {"min_shape": -0.2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", type=Path, nargs="+", help="the .npz of bench_ood.py --save-scores (several: pooled)")
    parser.add_argument("--fdr", type=float, default=0.05)
    parser.add_argument("--rules", nargs="+", choices=list(RULES), default=["bounded", "truncated"],
                        help="null fits to compare, side by side (default: bounded truncated)")
    parser.add_argument("--combine", nargs="+", action="append", default=[], metavar="SCORE",
                        help="also flag by the min-p (Bonferroni) of these scores' p-values, on sets that saved "
                             "them all (repeat for several combinations; e.g. --combine llr typicality)")
    parser.add_argument("--intersect", nargs="+", action="append", default=[], metavar="SCORE",
                        help="also flag by the max-p of these scores' p-values: every one must find the image "
                             "extreme (repeat for several; e.g. --intersect llr complexity)")
    args = parser.parse_args()
    rules = {name: RULES[name] for name in args.rules}
    saved = load_saved_scores(args.scores)
    # Per set and model (a PyOD detector has no "/"): its scores by name, which --combine and --intersect name.
    sets: dict[tuple[str, str, str, str], dict[str, np.ndarray]] = defaultdict(dict)
    for key in sorted(k for k in saved if k.endswith("|scored")):
        seed, task, direction, method, _ = key.split("|")
        if f"{seed}|{task}|{direction}|{method}|calibration" in saved:
            continue  # reference mode: conformal p-values (benchmarks/conformal_tail.py)
        family, _, name = method.rpartition("/")
        sets[seed, task, direction, family][name] = saved[key]
    rows, pooled = [], defaultdict(lambda: defaultdict(list))
    for (seed, task, direction, family), scores in sets.items():
        is_out = saved[f"{seed}|{task}|{direction}|is_out"].astype(bool)
        methods = {name: ("min", [name]) for name in scores}
        for how, groups in (("min", args.combine), ("max", args.intersect)):
            methods.update({f"{how}-p " + "+".join(c): (how, c) for c in groups if all(n in scores for n in c)})
        for method, (how, names) in methods.items():
            first = scores[names[0]]
            auroc = roc_auc_score(is_out, first) if is_out.any() and len(names) == 1 else "-"
            method = f"{family}/{method}" if family else method
            row = {"set": f"{task}: {direction}", "seed": seed, "score": method, "AUROC": auroc}
            for rule, options in rules.items():
                p = [tail_p_values(scores[name], **options) for name in names]
                # min-p: Bonferroni over the scores; max-p needs no correction (each p is valid alone).
                p = np.minimum(1.0, len(names) * np.min(p, axis=0)) if how == "min" else np.max(p, axis=0)
                flags = benjamini_hochberg(p, args.fdr)
                n, hits = int(flags.sum()), int((flags & is_out).sum())
                if is_out.any():
                    precision = hits / n if n else 1.0
                    row[rule] = f"{precision:.2f} / {hits / is_out.sum():.2f} ({n})"
                    pooled[method][f"{rule} precision"].append(precision)
                    pooled[method][f"{rule} recall"].append(hits / is_out.sum())
                else:
                    row[rule] = f"{n} flagged"
                    pooled[method][f"{rule} clean share"].append(n / len(first))
            rows.append(row)
    print(f"Precision / recall (count flagged), BH at fdr {args.fdr}:\n")
    print_table(rows)
    print("\nPooled per score (sets with outliers: mean precision and recall; clean sets: mean share flagged):\n")
    metrics = [f"{rule} {m}" for rule in rules for m in ("precision", "recall", "clean share")]
    print_table([{"score": method, **{k: float(np.mean(values[k])) for k in metrics if k in values}}
                 for method, values in sorted(pooled.items())])  # fmt: skip


if __name__ == "__main__":
    main()
