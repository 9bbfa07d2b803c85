"""Streaming benchmark: peak memory and throughput of reference-mode detection on large Parquet input.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_streaming.py            # 50k and 200k rows
    python benchmarks/bench_streaming.py --rows 20000 --no-ray                     # quicker

Generates a Parquet dataset of 28x28 gray digits (scikit-learn's bundled
digits upsampled and shifted, PNG in the Hugging Face image struct, labels),
written 10,000 rows per row group so generating it is bounded too; fits a
VAE (the default `genaug fit`: with the llr background model) once on a few
thousand of the images and saves it; then scores each dataset in a separate
subprocess per engine, so each peak RSS (`os.wait4` of that child) is the
job's own
(the peak when the job ends, and the process's peak by `os.wait4`, which
adds the interpreter's exit):

* `whole-load`: `load_images` + `detect_outliers(model=...)` + `.write` (the in-memory job);
* `streaming`: `genaug.pipelines.engines.local.detect_outliers_parquet`;
* `ray`: the Ray engine on a local Ray (`--ray-cpus`, 2 actors); its RSS is the
  driver's only (the actors are Ray's worker processes), and its time includes
  starting the actors, not Ray itself.

img/s counts the job from reading the input to the output file renamed into
place (imports and model loading excluded); "flagging" is the part spent in
`genaug.detect.calibrate_and_flag` (p-values, BH and the k-NN rarity over all
images: the same code on every engine; the rarity's k-NN search runs against
at most 20,000 sampled inliers, so it grows linearly in the rows). Every engine's
output is checked to equal the whole-load output, value for value.
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

ROW_GROUP = 10_000
MODES = ("whole-load", "streaming", "ray")


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` 28x28 gray digits to `path`, one row group of ROW_GROUP rows at a time."""
    import numpy as np
    import pyarrow.parquet as pq

    from bench_detect import digits_at
    from genaug.data.parquet import image_table

    writer = None
    for start in range(0, rows, ROW_GROUP):
        chunk = digits_at(28, min(ROW_GROUP, rows - start), seed=seed + start)
        chunk.ids = [f"row-{start + i:07d}" for i in range(len(chunk))]
        table = image_table(chunk, index=np.arange(start, start + len(chunk)))
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def fit_model(path: Path, rows: int) -> None:
    import genaug
    from bench_detect import digits_at
    from genaug.models.store import save_model

    model = genaug.fit(digits_at(28, rows, seed=10**6), train_config=genaug.TrainConfig(epochs=5, progress=False))
    save_model(model, path)


def score(mode: str, data: str, model_path: str, output: str, ray_cpus: int) -> dict:
    """One detection job in this (child) process; its seconds, and the seconds spent calibrating and
    flagging (p-values, BH and the k-NN rarity over all images, the same step on every engine)."""
    import genaug.detect
    import genaug.pipelines.engines.collect
    from genaug.models.store import load_model

    flagging = [0.0]
    calibrate_and_flag = genaug.detect.calibrate_and_flag

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return calibrate_and_flag(*args, **kwargs)
        finally:
            flagging[0] += time.perf_counter() - t0

    # Both callers' names: the in-memory job's module and the streaming engines'.
    genaug.detect.calibrate_and_flag = genaug.pipelines.engines.collect.calibrate_and_flag = timed
    model = load_model(model_path)
    if mode == "ray":
        import ray

        ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter()
    if mode == "whole-load":
        import genaug

        result = genaug.detect_outliers(genaug.load_images(data), model=model, console=None)
        result.write(output)
    elif mode == "streaming":
        from genaug.pipelines.engines.local import detect_outliers_parquet

        detect_outliers_parquet(data, output, model=model, console=None)
    else:
        from genaug.pipelines.engines.ray import detect_outliers_parquet

        detect_outliers_parquet(data, output, model=model, concurrency=ray_cpus, console=None)
    return {"seconds": time.perf_counter() - start, "flagging": flagging[0]}


def same_output(a: str, b: str) -> dict:
    """Whether two outputs hold the same rows (every column, scores and flags included)."""
    import pyarrow.parquet as pq

    return {"same": pq.read_table(a).equals(pq.read_table(b))}


def child(task: str, args) -> None:
    """Run one task in this process and print its answer as the last line of stdout."""
    if task == "generate":
        generate(Path(args.output), args.rows[0])
        answer = {}
    elif task == "fit":
        fit_model(Path(args.output), args.fit_rows)
        answer = {}
    elif task == "compare":
        answer = same_output(args.data, args.output)
    else:
        answer = score(task, args.data, args.model, args.output, args.ray_cpus)
        # The job's own peak, before the interpreter exits: tearing down torch at exit briefly adds
        # ~125 MiB (`python -c "import torch"` peaks at 509 MiB running, 634 MiB by wait4).
        answer["job_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(answer))


def run_child(task: str, **options) -> dict:
    """Run one task in a fresh process; its answer and its own peak RSS (MiB).

    The parent imports neither torch nor pyarrow: Linux carries the RSS a
    process had at fork into its child's ru_maxrss, so a heavy parent would
    set a floor under every child's figure.
    """
    args = [sys.executable, __file__, "--child", task]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()  # to the end first: a full pipe would block the child
    # wait4, not Popen.wait: it gives this child's own rusage (RUSAGE_CHILDREN is the max over all children).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{task} {options} failed with exit code {code}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000], help="Dataset sizes to score.")
    parser.add_argument("--fit-rows", type=int, default=3000, help="Images the model is fitted on.")
    parser.add_argument("--no-ray", action="store_true", help="Skip the Ray engine.")
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray, and its scoring actors.")
    parser.add_argument("--folder", type=Path, default=None, help="Where the data goes (default: a temp folder).")
    parser.add_argument("--engines", nargs="+", choices=MODES, default=list(MODES),
                        help="Engines to run; the first one's output is the reference the others must equal.")
    parser.add_argument("--ray-rows", type=int, nargs="*", default=None,
                        help="Row counts the Ray engine runs on (default: the smallest of --rows).")
    parser.add_argument("--child", choices=(*MODES, "generate", "fit", "compare"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return

    started = time.perf_counter()
    ray_rows = [] if args.no_ray else (args.ray_rows if args.ray_rows is not None else [min(args.rows)])
    if args.folder is not None:
        args.folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="genaug-bench-", dir=args.folder) as tmp:
        folder = Path(tmp)
        model = folder / "model.safetensors"
        t0 = time.perf_counter()
        run_child("fit", output=model, fit_rows=args.fit_rows)
        print(f"fitted a VAE on {args.fit_rows} images in {time.perf_counter() - t0:.0f} s", flush=True)
        rows_out = []
        for rows in args.rows:
            data = folder / f"digits28-{rows}.parquet"
            t0 = time.perf_counter()
            run_child("generate", output=data, rows=rows)
            print(f"generated {rows} rows ({data.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s",
                  flush=True)  # fmt: skip
            modes = [m for m in args.engines if m != "ray" or rows in ray_rows]
            reference = folder / f"{modes[0]}-{rows}.parquet"
            for mode in modes:
                output = folder / f"{mode}-{rows}.parquet"
                got = run_child(mode, data=data, model=model, output=output, ray_cpus=args.ray_cpus)
                same = run_child("compare", data=reference, output=output)["same"]
                rows_out.append({
                    "rows": rows, "engine": mode, "seconds": got["seconds"], "img/s": rows / got["seconds"],
                    "of which flagging (s)": got["flagging"],
                    "img/s without flagging": rows / (got["seconds"] - got["flagging"]),
                    "peak RSS (MiB)": round(got["job_rss_mib"]), "with exit (MiB)": round(got["peak_rss_mib"]),
                    "same output": same,
                })  # fmt: skip
                print(f"  {mode}: {rows / got['seconds']:.0f} img/s, peak RSS {got['job_rss_mib']:.0f} MiB "
                      f"({got['peak_rss_mib']:.0f} MiB with the exit)", flush=True)  # fmt: skip
                if output != reference:
                    output.unlink()
            reference.unlink()
            data.unlink()
    print()
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs visible, "
          f"{len(os.sched_getaffinity(0))} usable, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")  # fmt: skip
    print()
    print_table(rows_out)
    print()
    by = {(r["rows"], r["engine"]): r for r in rows_out}
    summary = []
    for rows in args.rows:
        if (rows, "whole-load") not in by or (rows, "streaming") not in by:
            continue
        whole, stream = by[(rows, "whole-load")], by[(rows, "streaming")]
        line = {
            "rows": rows, "streaming / whole-load img/s": stream["img/s"] / whole["img/s"],
            "same, without flagging": stream["img/s without flagging"] / whole["img/s without flagging"],
            "streaming peak RSS (MiB)": stream["peak RSS (MiB)"], "whole-load peak RSS (MiB)": whole["peak RSS (MiB)"],
        }  # fmt: skip
        if (rows, "ray") in by:
            line["ray / streaming img/s"] = by[(rows, "ray")]["img/s"] / stream["img/s"]
        summary.append(line)
    if summary:
        print_table(summary)
    if len(args.engines) == 2 and "ray" in args.engines and "streaming" in args.engines:
        for rows in ray_rows:
            print(f"{rows} rows: ray / streaming img/s = {by[(rows, 'ray')]['img/s'] / by[(rows, 'streaming')]['img/s']:.3f}")
    print(f"\nwall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
