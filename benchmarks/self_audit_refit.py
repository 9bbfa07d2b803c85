"""Self-audit with one cross-fitting round or two (`detect_outliers(..., refit=R)`), side by side.

    python benchmarks/self_audit_refit.py --emoji-dir ../shared/data --seeds 3
    python benchmarks/self_audit_refit.py --emoji-dir ../shared/data --tasks photo --refits 0 0.05 0.1
    python benchmarks/self_audit_refit.py --emoji-dir ../shared/data --quick      # smoke run

The self-audit sets of `bench_ood.py` (`--tasks`, default `photo clean`: 2%
photo crops among Google emoji, 2% Google emoji among photo crops, and the
clean sets), scored with the default score (`auto`) at each `--refits`
share: 0 is one round; R > 0 retrains the fold models without the images
whose first-round scores are in the top R, and scores with those. Every R
of one set shares the first round (trained once). Prints, per set and R,
AUROC and the default flags' precision, recall and count (BH at fdr 0.05)
and the training seconds that R added ("trained s": the first round for the
first R, the second round for the others), then the means over the seeds.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from bench_ood import INJECT_SHARE, build_tasks, cross_fit_once, load_emoji, log, metrics
from genaug.detect import SUGGESTED_REFIT, detect_outliers
from genaug.train import TrainConfig
from tables import print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emoji-dir", type=Path, required=True,
                        help="the folder of emoji-google-32.npz and emoji-twitter-32.npz")
    parser.add_argument("--tasks", nargs="+", default=["photo", "clean"], choices=["injected", "photo", "clean"])
    parser.add_argument("--refits", nargs="+", type=float, default=[0.0, SUGGESTED_REFIT])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30, help="fixed, so the figures do not move with the load")
    parser.add_argument("--time-limit", type=float, default=4.0, help="minutes per model, a cap")
    parser.add_argument("--quick", action="store_true", help="a share of the emoji and 2 epochs: a smoke run")
    args = parser.parse_args()
    emoji = load_emoji(args.emoji_dir, args.quick)
    print(f"# {INJECT_SHARE:.0%} injected; epochs {2 if args.quick else args.epochs}; refits {args.refits}")
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        config = TrainConfig(epochs=2 if args.quick else args.epochs, time_limit=args.time_limit, seed=seed,
                             progress=False)  # fmt: skip
        for task in build_tasks(emoji, [], seed, args.tasks):
            with cross_fit_once() as timer:
                for refit in args.refits:
                    before = timer["seconds"]
                    result = detect_outliers(task.test, refit=refit, train_config=config, console=None)
                    m = metrics(task.is_out, result.score, result.is_outlier)
                    rows.append({"seed": seed, "set": task.direction, "refit": refit, **m,
                                 "trained s": timer["seconds"] - before})  # fmt: skip
                    log(f"seed {seed}, {task.direction}, refit {refit}: AUROC {m['AUROC']:.3f}, "
                        f"flagged {m['flagged']}, precision {m['precision']:.2f}, recall {m['recall']:.2f}")
    print_table(rows)
    print()
    keys = ("AUROC", "precision", "recall", "flagged")
    means = []
    for name in dict.fromkeys(r["set"] for r in rows):
        for refit in args.refits:
            mine = [r for r in rows if r["set"] == name and r["refit"] == refit]
            with warnings.catch_warnings():  # precision is nan where nothing was flagged in every seed
                warnings.simplefilter("ignore", RuntimeWarning)
                means.append({"set": name, "refit": refit, "seeds": len(mine),
                              **{k: float(np.nanmean([r[k] for r in mine])) for k in keys}})  # fmt: skip
    print_table(means)


if __name__ == "__main__":
    main()
