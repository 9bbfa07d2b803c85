"""Training from disk: `genaug fit` on Parquet read batch by batch, beside the same fit in memory.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_train_disk.py            # 100k rows, 1 epoch

Generates a Parquet dataset of 28x28 gray digits (`bench_streaming.generate`,
row groups of 10,000 rows), then fits a VAE (`--no-llr`, `--epochs`) on it
in a fresh process per way, each process's peak RSS its own:

* `memory`: `load_images` + `genaug.fit` (the job below the streaming threshold);
* `disk`: `training_data` with the threshold at 0 and the decoded cache cut
  to `--cache-mib`, so the training split spans several shuffle windows, as
  a dataset larger than the default 512 MiB cache would.

Training img/s is the training loop's own figure (images stepped on per
second, validation included); `seconds` is the whole fit (reading, training,
calibration).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import print_table  # noqa: E402


def fit_once(way: str, data: str, epochs: int, cache_mib: int) -> dict:
    """One fit in this (child) process."""
    import genaug.data.disk_images as disk_images
    from genaug.data.readers import load_images
    from genaug.fit import fit
    from genaug.train import TrainConfig

    start = time.perf_counter()
    if way == "memory":
        images = load_images(data)
    else:
        os.environ["GENAUG_STREAM_BYTES"] = "0"
        disk_images.CACHE_BYTES = cache_mib * 2**20
        images = disk_images.training_data(data)
    model = fit(images, llr=False, train_config=TrainConfig(epochs=epochs, seed=0), console=None)
    training = model.metadata["training"]
    return {"seconds": time.perf_counter() - start, "train img/s": training["images_per_second"],
            "train seconds": training["seconds"], "val bits/dim": training["best_val_bits_per_dim"],
            "job_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def run_child(*args: str) -> dict:
    """Run this script's child mode in a fresh process; its last stdout line, as JSON."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="Rows of the generated dataset.")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--cache-mib", type=int, default=32, help="The disk way's decoded cache (windows: half).")
    parser.add_argument("--folder", type=Path, default=None, help="Where the data goes (default: a temp folder).")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # way, data
    args = parser.parse_args()
    if args.child:
        print(json.dumps(fit_once(args.child[0], args.child[1], args.epochs, args.cache_mib)))
        return
    started = time.perf_counter()
    if args.folder is not None:
        args.folder.mkdir(parents=True, exist_ok=True)
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="genaug-bench-", dir=args.folder) as tmp:
        data = Path(tmp) / f"digits28-{args.rows}.parquet"
        subprocess.run([sys.executable, "-c", f"from bench_streaming import generate; from pathlib import Path; "
                        f"generate(Path({str(data)!r}), {args.rows})"], check=True,
                       cwd=Path(__file__).resolve().parent)  # fmt: skip
        windows = -(-args.rows * 28 * 28 // (args.cache_mib * 2**19))
        for way in ("memory", "disk"):
            got = run_child("--child", way, str(data), "--epochs", str(args.epochs), "--cache-mib", str(args.cache_mib))
            rows_out.append({"way": way, "shuffle windows": 1 if way == "memory" else windows,
                             "fit seconds": got["seconds"], "train img/s": got["train img/s"],
                             "val bits/dim": got["val bits/dim"], "peak RSS (MiB)": round(got["job_rss_mib"])})  # fmt: skip
            print(f"  {way}: {got['train img/s']:.0f} train img/s, peak RSS {got['job_rss_mib']:.0f} MiB", flush=True)
    print()
    print(f"Python {platform.python_version()}, {args.rows} rows, {args.epochs} epoch(s), "
          f"{len(os.sched_getaffinity(0))} usable CPU(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")  # fmt: skip
    print()
    print_table(rows_out)
    ratio = rows_out[1]["train img/s"] / rows_out[0]["train img/s"]
    print(f"\ndisk / memory train img/s = {ratio:.3f}; wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
