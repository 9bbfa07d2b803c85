"""The Ray engine: reference-mode scoring as Ray Data `map_batches` in an actor pool.

The dataset handed to Ray is the list of shards (aligned row ranges of
`SHARD_ROWS` rows, `genaug.pipelines.engines.shards`); `map_batches` runs a
callable class, `ShardScorer`, in a fixed pool of `concurrency` actors
(`ActorPoolStrategy`; one GPU each, `num_gpus=1`, when the cluster has GPUs).
Each actor loads the model once, from checkpoint bytes shipped through the
object store (workers need no shared disk for it), and per call (batch_size
1: one shard) reads its rows from the Parquet input itself, decodes and
scores them. Reading inside the scorer, rather than `ray.data.read_parquet`
ahead of it, keeps every shard whole: random draws are seeded per block of
rows, and Ray may cut and merge the blocks of a read wherever it likes.

The scored shards come back to this process in input order (Ray Data's
`preserve_order`) and go through the same `collect.write_detection` as the
local engine's: scores gathered, calibrated and flagged over every image
(never per shard), the output written with the same schema and metadata.

With no `address`, a local Ray is started for the job (`ray.init(num_cpus=...)`)
and stopped after; with one (`ray://host:10001`, `auto`), the job joins that
cluster and leaves it running. A Ray already started in this process is used
as it is. Workers must have genaug installed and read the input path: a
shared filesystem or object store URI.

NOTE: Ray Data (2.5x) prints one `core_worker.cc` line per actor pool about
constructor arguments in the object store (ray-project/ray#53727); it is
Ray's own, for any actor-pool `map_batches`, and harmless here.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pyarrow as pa

from genaug.data.imageset import ImageSet
from genaug.data.readers import as_imageset
from genaug.data.streaming import ImageBatch, open_parquet
from genaug.detect import (
    DEFAULT_CONFORMAL,
    DEFAULT_FDR,
    DetectionResult,
    ReferencePlan,
    calibrate_and_flag,
    reference_plan,
)
from genaug.errors import GenaugError, first_line, warn_all
from genaug.models.base import GenerativeModel
from genaug.progress import AUTO, progress_bar, resolve_console
from genaug.scoring import reads_background
from genaug.pipelines.engines.collect import StreamedDetection, write_detection
from genaug.pipelines.engines.local import channels_for, check_colour
from genaug.pipelines.engines.shards import SHARD_ROWS, raw_scores, score_batch

# Scoring actors when the cluster has no GPU (with GPUs: one per GPU).
DEFAULT_CONCURRENCY = 2
_COLOUR = "_colour"


class ShardScorer:
    """The callable class Ray Data runs in each actor: loads the model once, then scores shards.

    A call takes a batch of shard rows (`start`, `stop`) and returns their
    scored tables (`shards.score_batch`) as one Arrow table. `shared` holds
    one object-store reference to (checkpoint bytes, source, images): rows
    come from the source (a `ParquetSource`, reopened in the worker) or,
    for data already in memory, from images (a (pixels, labels) pair).
    Passed in a list, the reference reaches the actor as it is and the
    actor fetches it once, so the constructor arguments stay small.
    """

    def __init__(self, shared: list, options: dict, with_background: bool, device: str, mode: str | None) -> None:
        import ray
        import torch

        from genaug.models.store import load_model

        checkpoint, self.source, self.images = ray.get(shared[0])
        # The checkpoint loader reads files (safetensors, never pickle): the bytes go to a private temp file.
        with tempfile.TemporaryDirectory(prefix="genaug-ray-") as folder:
            path = Path(folder) / "model.safetensors"
            path.write_bytes(checkpoint)
            self.model = load_model(path, device=torch.device(device))
        self.options, self.with_background, self.mode = options, with_background, mode

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = []
        for start, stop in zip(batch.column("start").to_pylist(), batch.column("stop").to_pylist()):
            rows = self._rows(start, stop)
            table = score_batch(self.model, rows, options=self.options, with_background=self.with_background)
            tables.append(table.append_column(_COLOUR, pa.array([rows.colour] * len(rows))))
        return pa.concat_tables(tables)

    def _rows(self, start: int, stop: int) -> ImageBatch:
        if self.source is not None:
            return self.source.read(start, stop, mode=self.mode)
        import torch

        pixels, labels = self.images
        ids = [str(i) for i in range(start, stop)]  # the driver keeps the real ids
        part = None if labels is None else labels[start:stop]
        # A copy: the object store hands out read-only arrays, which torch warns about.
        return ImageBatch(start, torch.from_numpy(pixels[start:stop].copy()), part, ids, [None] * len(ids), False)


def detect_outliers_parquet(
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: GenerativeModel | str | Path,
    address: str | None = None,
    concurrency: int | None = None,
    num_cpus: int | None = None,
    score: str = "auto",
    fdr: float = DEFAULT_FDR,
    contamination: float | None = None,
    iwae_k: int | None = None,
    mutation_rate: float | None = None,
    conformal: str = DEFAULT_CONFORMAL,
    image_size: int | tuple[int, int] | None = None,
    mode: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    allow_outside_root: bool = False,
    max_pixels: int | None = None,
    console=AUTO,
    command: str | None = None,
    metadata: dict | None = None,
) -> StreamedDetection:
    """`genaug.pipelines.engines.local.detect_outliers_parquet` with the scoring on Ray.

    `address` joins a running cluster (None starts a local Ray with
    `num_cpus` CPUs, default all); `concurrency` scoring actors (default:
    one per GPU, else DEFAULT_CONCURRENCY). Output identical to the local
    engine's.
    """
    console = resolve_console(console)
    plan = reference_plan(model, score=score, fdr=fdr, contamination=contamination, iwae_k=iwae_k,
                          mutation_rate=mutation_rate, conformal=conformal)  # fmt: skip
    inputs = [("DATA", data)] + ([("--model-path", model)] if isinstance(model, (str, Path)) else [])
    source = open_parquet(
        data, image_column, label_column, id_column, image_size=image_size, mode=mode,
        allow_outside_root=allow_outside_root, max_pixels=max_pixels,
    )  # fmt: skip
    mode_used = channels_for(plan.model, source)
    colour = [False]

    def shards():
        for table in _scored(plan, len(source), console, address, concurrency, num_cpus,
                             source=source, mode=mode_used):  # fmt: skip
            colour[0] |= any(table.column(_COLOUR).to_pylist())
            yield table.drop_columns([_COLOUR])
        check_colour(plan.model, source, colour[0])

    result = write_detection(
        shards(), output, plan=plan, requested=score, fdr=fdr, contamination=contamination,
        class_names=source.class_names, inputs=inputs, command=command, metadata=metadata,
    )  # fmt: skip
    warn_all(result.warnings)
    return result


def detect_outliers(
    data,
    *,
    model: GenerativeModel | str | Path | None = None,
    score: str = "auto",
    fdr: float = DEFAULT_FDR,
    contamination: float | None = None,
    iwae_k: int | None = None,
    mutation_rate: float | None = None,
    conformal: str = DEFAULT_CONFORMAL,
    address: str | None = None,
    concurrency: int | None = None,
    num_cpus: int | None = None,
    console=AUTO,
    **_self_audit,
) -> DetectionResult:
    """`genaug.detect_outliers` in reference mode with the scoring on Ray, for data already in memory
    (what a pipeline step with `engine: ray` holds); the same result, value for value.

    Self-audit trains models and is not run on Ray: `model` is required.
    Options for self-audit (family, training) are accepted and unused.
    """
    if model is None:
        raise GenaugError("engine ray scores against a fitted model (reference mode); give a model, or use engine local")
    console = resolve_console(console)
    data = as_imageset(data)
    plan = reference_plan(model, score=score, fdr=fdr, contamination=contamination, iwae_k=iwae_k,
                          mutation_rate=mutation_rate, conformal=conformal)  # fmt: skip
    tables = list(_scored(plan, len(data), console, address, concurrency, num_cpus, data=data))
    raw = raw_scores(tables)
    png = [b for t in tables for b in t.column("image").combine_chunks().field("bytes").to_pylist()]
    settings = dict(plan.settings)
    flagged = calibrate_and_flag(raw, kind=plan.kind, requested=score, reference=plan.record.scores, fdr=fdr,
                                 contamination=contamination, settings=settings)  # fmt: skip
    warn_all(flagged.warnings)
    return DetectionResult(
        data=data, score=flagged.score, bits_per_dim=raw.bits_per_dim, p_value=flagged.p_value,
        is_outlier=flagged.is_outlier, rank=flagged.rank, settings=settings, png=png, warnings=flagged.warnings,
        reference_bits_per_dim=plan.record.scores.bits_per_dim, rarity=flagged.rarity, category=flagged.category,
    )  # fmt: skip


def _scored(plan: ReferencePlan, n: int, console, address, concurrency, num_cpus, *, source=None, mode=None,
            data: ImageSet | None = None):  # fmt: skip
    """Yield scored shard tables in input order, scored by a pool of `ShardScorer` actors."""
    _check_count("concurrency", concurrency)
    _check_count("num_cpus", num_cpus)
    ray = _import_ray()
    started = _connect(ray, address, num_cpus)
    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    log = logging.getLogger("ray.data")
    level = log.level
    # Ray Data logs each execution on stderr; the CLI keeps stderr to its own lines.
    log.setLevel(logging.ERROR)
    try:
        # Shards must come back in input order: the spill and the gathered scores are positional.
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        gpus = int(ray.cluster_resources().get("GPU", 0))
        size = concurrency or (gpus or DEFAULT_CONCURRENCY)
        images = None
        if data is not None:
            images = data.images.numpy(), data.labels if plan.model.num_classes > 0 else None
        constructor = {
            "shared": [ray.put((_checkpoint_bytes(plan.model), source, images))], "options": plan.options,
            "with_background": reads_background(plan.kind), "device": "cuda" if gpus else "cpu", "mode": mode,
        }  # fmt: skip
        starts = range(0, n, SHARD_ROWS)
        shards = ray.data.from_items([{"start": s, "stop": min(n, s + SHARD_ROWS)} for s in starts])
        scored = shards.map_batches(
            ShardScorer, batch_size=1, batch_format="pyarrow", fn_constructor_kwargs=constructor,
            compute=ray.data.ActorPoolStrategy(size=size), num_cpus=1, num_gpus=1 if gpus else 0,
        )  # fmt: skip
        with progress_bar(console, f"scoring on Ray ({size} actors)", n) as advance:
            for table in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                yield table
                advance(table.num_rows)
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        log.setLevel(level)
        if started:
            ray.shutdown()


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise GenaugError("the Ray engine needs Ray: pip install 'genaug[ray]'") from None
    return ray


def _connect(ray, address: str | None, num_cpus: int | None) -> bool:
    """Start or join Ray unless this process already has; whether this call started it."""
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=num_cpus, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise GenaugError(f"cannot start {where}: {first_line(e)}") from None
    return True


def _checkpoint_bytes(model: GenerativeModel) -> bytes:
    """The model as checkpoint bytes (the file `save_model` writes), for the workers."""
    from genaug.models.store import save_model

    with tempfile.TemporaryDirectory(prefix="genaug-ray-") as folder:
        path = Path(folder) / "model.safetensors"
        save_model(model, path)
        return path.read_bytes()


def _check_count(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise GenaugError(f"--ray-{name.replace('_', '-')} must be a positive integer, got {value!r}")
