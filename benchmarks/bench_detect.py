"""Detection benchmark: fit time, end-to-end scoring throughput, self-audit AUROC.

    python benchmarks/bench_detect.py            # the figures in benchmarks/README.md
    python benchmarks/bench_detect.py --n 2000   # quicker

Data: scikit-learn's bundled digits (8x8) and the same digits upsampled to
28x28 with random shifts to reach `--n` images (no download). Timings are
of the public API, exactly what `genaug fit` / `genaug detect-outliers
--model-path` run, PNG encoding and Parquet writing included.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import genaug  # noqa: E402
from conftest import with_foreign_images  # noqa: E402
from tables import print_table  # noqa: E402
from genaug.data.imageset import ImageSet  # noqa: E402


def digits_at(size: int, n: int, seed: int = 0) -> ImageSet:
    """`n` digits at `size`x`size`: upsampled and randomly shifted by up to 2 px."""
    base = genaug.load_images("digits")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), n)
    x = base.images[torch.from_numpy(idx)].float()
    if size != 8:
        x = F.interpolate(x, size=(size - 4, size - 4), mode="bilinear", align_corners=False)
        x = F.pad(x, (2, 2, 2, 2))
        shifts = rng.integers(-2, 3, size=(n, 2))
        x = torch.stack([torch.roll(img, tuple(int(s) for s in sh), dims=(1, 2)) for img, sh in zip(x, shifts)])
    images = x.round().clamp(0, 255).to(torch.uint8)
    return ImageSet(images, base.labels[idx], base.class_names, source=f"digits{size}")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_size(size: int, n: int, seed: int) -> dict:
    data = digits_at(size, n, seed)
    t0 = time.perf_counter()
    model = genaug.fit(data, train_config=genaug.TrainConfig(progress=False, seed=seed))
    fit_s = time.perf_counter() - t0
    training = model.metadata["training"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        genaug.save_model(model, path)
        loaded = genaug.load_model(path)
        genaug.detect_outliers(data.subset(np.arange(min(n, 512))), model=loaded)  # warm-up
        # Medians of three runs: a shared 2-core machine's timings wander by +-30%.
        score_times, write_times = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            result = genaug.detect_outliers(data, model=loaded)
            score_times.append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            result.write(Path(tmp) / "out.parquet")
            write_times.append(time.perf_counter() - t1)
        score_s, write_s = statistics.median(score_times), statistics.median(write_times)
    return {
        "size": f"{size}x{size}",
        "images": n,
        "fit s": fit_s,
        "epochs": training["epochs_run"],
        "train img/s": training["images_per_second"],
        "val bits/dim": training["best_val_bits_per_dim"],
        "score img/s": n / score_s,
        "score+write img/s": n / (score_s + write_s),
    }


def bench_self_audit(seed: int) -> dict:
    data, foreign = with_foreign_images(genaug.load_images("digits"), share=0.03, seed=seed)
    t0 = time.perf_counter()
    result = genaug.detect_outliers(data, train_config=genaug.TrainConfig(progress=False, seed=seed))
    seconds = time.perf_counter() - t0
    flagged = result.is_outlier
    return {
        "seed": seed,
        "AUROC auto": roc_auc_score(foreign, result.score),
        "AUROC nll": roc_auc_score(foreign, result.bits_per_dim),
        "flagged": int(flagged.sum()),
        "recall": float(flagged[foreign].mean()),
        "precision": float(foreign[flagged].mean()) if flagged.any() else float("nan"),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images per size for fit/score")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the self-audit AUROC")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print("\n## fit and score (saved model, reference mode)\n")
    print_table([bench_size(8, args.n, 0), bench_size(28, args.n, 0)])
    print("\n## self-audit on digits with 3% foreign images (half inverted, half noise)\n")
    print_table([bench_self_audit(s) for s in range(args.seeds)])
    print(f"\npeak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
