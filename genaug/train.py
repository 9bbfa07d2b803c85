"""The one training loop, for every family.

It knows the model contract, not the families: a model is trained in
`stages` (each prepared, trained and early-stopped in turn, e.g. a VQ-VAE's
autoencoder, then a prior over its codes), and a stage is a round of
`players` (each with its own parameters, loss, optimiser settings, clipping
and steps per round, e.g. a GAN's discriminator and generator). A family's
`default_training()` fills the settings the user left unset. Device is
automatic (CUDA when present), bf16 autocast on CUDA, float32 on CPU; runs
are seeded and reproducible on CPU; a validation split drives early
stopping and the best weights (their EMA when the family asks for one) are
kept. `time_limit` bounds the whole run in minutes, whatever the epoch length.

The images are a uint8 tensor [N, C, H, W] held on the device, or an image
source for data that does not fit there: any object with `len()`, `.shape`
(N, C, H, W) and `source[indices]` (a CPU LongTensor) returning those rows,
in that order, as a uint8 tensor [k, C, H, W]. A source is read one batch
per step (validation: VALIDATION_BATCH images at a time; a stage's
`prepare`: at most PREPARE_MAX_BYTES of training images) and each batch is
moved to the device on its own; it trains the same model as the tensor.
A source that reads in blocks (Parquet row groups) says so with `blocks()`
and `cache_bytes`; each epoch's shuffle is then grouped into windows of
blocks that fit half its cache, in a random window order, so a batch reads
a window's blocks and not the whole dataset (one window: the same shuffle
as the tensor; see genaug.data.disk_images).

Under `torchrun --nproc_per_node=W` (see genaug.distributed) the W
processes train one model. `batch_size` stays the global batch: every rank
draws the same seeded permutation, splits each batch into W shards and
takes its own, and one all-reduce per optimiser step sums each rank's
gradient weighted by its share of the batch (the gradient of the whole
batch's mean loss) together with the loss, the nll sums and the time-limit
flag, so every rank steps on the same gradient and takes the same branch.
Validation is sharded and its sums all-reduced; a stage starts from rank
0's weights; rank 0 alone shows progress. For a loss that is a mean of
per-image terms and draws no random numbers, the model is the one a single
process trains with the same seed, up to floating-point summation order.
Random draws inside a loss (a VAE's reparameterisation noise, a perturbed
pixel) come from each rank's own stream (seed + rank), so they differ from
one process's; trimming picks the worst images of each shard.

NOTE: gradients are all-reduced by hand, not by DistributedDataParallel.
A player's loss is a closure over the family's own methods, not the
module's `forward`, so DDP's reducer would never be armed; and a player
owns a subset of the parameters (a GAN's generator loss reaches the
discriminator, whose gradients that player must neither average nor step).
The price is no overlap of communication with the backward pass.

Divergence (a NaN or infinite loss, gradient norm, weight or validation
score) is survived once per stage: the weights and optimiser states of the
last good epoch come back, the learning rates are lowered, and the epoch
runs again. A second divergence is one GenaugError line. A trained model
never holds NaN.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Protocol

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from genaug import allocator, distributed, interrupt
from genaug.errors import GenaugError
from genaug.models.base import GenerativeModel, Losses, Player, Stage, bits_per_dim

MIN_IMAGES_FOR_VALIDATION = 20
VALIDATION_BATCH = 1024  # images per validation forward pass (and per read from an image source)
# What an image source may hand a stage's `prepare` at once (a seeded subset of the training split beyond it).
PREPARE_MAX_BYTES = 256 * 2**20
AUTO_IMAGES = 200_000
# After the first divergence the learning rate is multiplied by this; there is no second chance.
DIVERGENCE_LR_FACTOR = 0.1
# What a setting left as None becomes when the family has no default for it either.
GLOBAL_DEFAULTS = {"batch_size": 128, "lr": 3e-3, "betas": (0.9, 0.999)}


class ImageSource(Protocol):
    """Images read as they are needed, for data that does not fit on the device (Parquet files, say).

    `source[indices]` takes a CPU LongTensor and returns those images, in
    that order, as a uint8 CPU tensor [len(indices), C, H, W].
    """

    shape: tuple[int, int, int, int]  # (N, C, H, W)

    def __len__(self) -> int: ...

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TrainConfig:
    """Training settings. The defaults fit 10,000 28x28 images in well under two
    minutes on a 2-core CPU and converge on small datasets like digits.

    `epochs=None` picks enough epochs to show the model about
    `AUTO_IMAGES` images (at least 10, at most 200): small datasets need
    many passes, large ones few. `batch_size`, `lr`, `betas` and `ema_decay`
    left as None take the family's `default_training()`, then
    GLOBAL_DEFAULTS. `time_limit` (minutes) stops training within seconds
    of the budget, after a last validation, keeping the best weights.
    """

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    betas: tuple[float, float] | None = None
    ema_decay: float | None = None  # None or 0: no EMA; e.g. 0.999 keeps an EMA of the weights
    time_limit: float | None = None  # minutes
    val_fraction: float = 0.1
    patience: int = 10  # epochs without a validation improvement before stopping
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    max_grad_norm: float = 100.0
    # Share of each batch's highest per-image losses left out of the gradient
    # (trimmed likelihood). Self-audit data may hold the outliers it looks for;
    # trimming keeps the model from learning them. None = the job's default
    # (0 for fit, detect.SELF_AUDIT_TRIM for self-audit).
    trim_fraction: float | None = None

    def resolved(self, model: GenerativeModel) -> TrainConfig:
        """This config with unset settings taken from the family, then GLOBAL_DEFAULTS."""
        family = model.default_training()
        unknown = set(family) - {f.name for f in fields(self)}
        if unknown:
            raise GenaugError(f"model family '{model.name}' has unknown training defaults: {', '.join(sorted(unknown))}")
        filled = {k: v for k, v in family.items() if getattr(self, k) is None}
        filled.update({k: v for k, v in GLOBAL_DEFAULTS.items() if getattr(self, k) is None and k not in filled})
        return replace(self, **filled)

    def check(self) -> None:
        """One GenaugError line for a setting out of range."""
        if self.epochs is not None and not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise GenaugError(f"epochs must be a positive integer, got {self.epochs}")
        if self.batch_size is not None and not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise GenaugError(f"batch size must be a positive integer, got {self.batch_size}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr >= 0):
            raise GenaugError(f"lr must be a finite non-negative number, got {self.lr}")
        if self.time_limit is not None and not (math.isfinite(self.time_limit) and self.time_limit > 0):
            raise GenaugError(f"--time-limit must be a positive number of minutes, got {self.time_limit}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise GenaugError(f"ema decay must be in [0, 1), got {self.ema_decay}")
        if self.trim_fraction is not None and not 0 <= self.trim_fraction < 1:
            raise GenaugError(f"--trim must be in [0, 1), got {self.trim_fraction}")


@dataclass
class TrainReport:
    """What a training run did; stored in `model.metadata["training"]`.

    The top-level figures are those of the last stage that trained (the one
    whose weights the jobs use); `stages` has one entry per stage.
    """

    family: str
    epochs_run: int
    best_epoch: int
    best_val_bits_per_dim: float | None
    train_bits_per_dim: float | None
    seconds: float
    images_per_second: float
    device: str  # rank 0's under torchrun
    stopped_early: bool
    # Set when training diverged once and went on from the last good epoch at a lower rate.
    lr_lowered_at_epoch: int | None = None
    final_lr: float | None = None
    time_limited: bool = False
    stages: list[dict] = field(default_factory=list)
    world_size: int = 1  # processes that trained together (torchrun); images_per_second counts them all

    def summary(self) -> str:
        """One line for humans."""
        val = "no validation split" if self.best_val_bits_per_dim is None else f"val {self.best_val_bits_per_dim:.3f}"
        extra = ""
        if self.lr_lowered_at_epoch is not None:
            extra += f"; diverged in epoch {self.lr_lowered_at_epoch}, lr lowered to {self.final_lr:g}"
        if self.time_limited:
            extra += "; stopped at the time limit"
        where = self.device if self.world_size == 1 else f"{self.world_size} processes ({self.device} on rank 0)"
        return (
            f"trained {self.family} for {self.epochs_run} epochs (best {self.best_epoch}) in {self.seconds:.1f} s, "
            f"{self.images_per_second:,.0f} img/s on {where}; {val}{extra}"
        )


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cpu', 'cuda', 'cuda:N' as asked, with clear errors."""
    key = (name or "auto").lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(key)
    except RuntimeError:
        raise GenaugError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GenaugError(f"--device {name} asked for CUDA but no CUDA GPU is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GenaugError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise GenaugError(f"unsupported device '{name}'; use auto, cpu, cuda or cuda:N")
    return device


@dataclass
class _Run:
    """What every stage of one training run shares."""

    model: GenerativeModel
    config: TrainConfig
    images: object  # the tensor on the device, or the image source
    fetch: Callable[[torch.Tensor], torch.Tensor]  # indices -> uint8 batch on the device
    y: torch.Tensor | None
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    train_weights: torch.Tensor | None
    val_weights: torch.Tensor | None
    generator: torch.Generator
    autocast: torch.autocast
    console: Console | None
    bar: Progress | None
    device: torch.device
    world: int = 1  # processes training together, and this one's rank among them
    rank: int = 0
    train_window: torch.Tensor | None = None  # each training index's shuffle window (a source read in blocks)
    n_windows: int = 1
    step: int = 0  # optimiser steps so far, over all stages and players
    seen: int = 0  # images stepped on, over all ranks


def train(
    model: GenerativeModel,
    images: torch.Tensor | ImageSource,
    labels: torch.Tensor | None = None,
    config: TrainConfig | None = None,
    *,
    sample_weights: torch.Tensor | None = None,
    console: Console | None = None,
) -> TrainReport:
    """Train `model` on uint8 `images` (and `labels` for conditional families) in place, stage by stage.

    `images` is a uint8 tensor [N, C, H, W] or an image source read batch by
    batch (see the module docstring). With `sample_weights` [N], each epoch
    draws its images with replacement in proportion to them (DB-VAE's
    adaptive resampling) instead of a shuffle. Under torchrun every rank
    calls this with the same arguments and ends with the same weights.
    """
    config = (config or TrainConfig()).resolved(model)
    config.check()
    allocator.tune()  # activations reused from the heap, not mapped afresh every batch
    source = None if isinstance(images, torch.Tensor) else _check_source(images)
    n = images.shape[0]
    if n == 0:
        raise GenaugError("no images to train on")
    device = distributed.setup(resolve_device(config.device))
    world, rank = distributed.world_size(), distributed.rank()
    # Parameter init noise in families that draw it lazily, and training noise. Each rank
    # draws its own (one process is rank 0); a stage starts from rank 0's weights anyway.
    torch.manual_seed(config.seed + rank)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(config.seed + rank)  # training noise comes from the device's global RNG
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device)
    if source is None:
        x_all = images.to(device)
        fetch, index_device = x_all.__getitem__, device  # the in-memory path: plain indexing, nothing more
    else:
        x_all = source
        fetch, index_device = (lambda idx: _read(source, idx, device)), torch.device("cpu")
    y_all = None if labels is None else labels.to(device)

    perm = torch.randperm(n, generator=generator)
    n_val = int(round(config.val_fraction * n)) if n >= MIN_IMAGES_FOR_VALIDATION else 0
    val_idx, train_idx = perm[:n_val].to(index_device), perm[n_val:].to(index_device)
    train_window, n_windows = _shuffle_windows(source, train_idx)
    if train_window is not None:
        val_idx = val_idx.sort().values  # validated in file order: each row group read once per pass
    train_weights = val_weights = None
    if sample_weights is not None:
        sample_weights = torch.as_tensor(sample_weights, dtype=torch.float64)
        if sample_weights.shape != (n,) or not torch.isfinite(sample_weights).all() or (sample_weights < 0).any():
            raise GenaugError(f"sample weights must be {n} finite non-negative numbers")
        train_weights = sample_weights[train_idx.cpu()]
        # Validation follows the same weighting, so early stopping and the best
        # weights judge the objective being trained, not the unweighted one.
        val_weights = sample_weights[val_idx.cpu()]

    stages = model.stages()
    shares = [max(0.0, float(s.budget_share)) for s in stages]
    total_share = sum(shares) or 1.0
    epochs = config.epochs or auto_epochs(train_idx.numel())
    show = config.progress and console is not None and distributed.is_main()
    started = time.perf_counter()
    deadline = None if config.time_limit is None else started + 60.0 * config.time_limit
    reports: list[dict] = []
    last: dict | None = None
    with _progress(show, console) as bar:
        run = _Run(model, config, x_all, fetch, y_all, train_idx, val_idx, train_weights, val_weights, generator,
                   torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"),
                   console if show else None, bar, device, world, rank, train_window, n_windows)
        for i, stage in enumerate(stages):
            if stage.prepare is not None:
                with torch.no_grad():
                    idx = _prepare_indices(run)
                    stage.prepare(_prepare_images(run, idx), None if y_all is None else y_all[idx])
            # Every rank starts the stage from rank 0's weights, whatever its own init or preparation drew.
            distributed.broadcast_state(model)
            players = stage.players()
            if not players or shares[i] == 0:
                continue
            stage_epochs = max(1, round(epochs * shares[i] / total_share))
            stage_deadline = None
            if deadline is not None:
                # This stage's share of the time still left, so an early-stopped stage gives its rest to the next.
                remaining = sum(shares[i:]) or 1.0
                stage_deadline = time.perf_counter() + (deadline - time.perf_counter()) * shares[i] / remaining
            last = _train_stage(run, stage, players, stage_epochs, stage_deadline)
            reports.append(last)
    seconds = time.perf_counter() - started
    model.eval()
    last = last or {"name": "none", "epochs_run": 0, "best_epoch": 0, "best_val": None, "train_bpd": None,
                    "stopped_early": False, "lr_lowered_at_epoch": None, "final_lr": None, "time_limited": False}
    report = TrainReport(
        family=model.name,
        epochs_run=sum(r["epochs_run"] for r in reports),
        best_epoch=last["best_epoch"],
        best_val_bits_per_dim=last["best_val"],
        train_bits_per_dim=last["train_bpd"],
        seconds=seconds,
        images_per_second=run.seen / max(seconds, 1e-9),
        device=str(device),
        stopped_early=last["stopped_early"],
        lr_lowered_at_epoch=last["lr_lowered_at_epoch"],
        final_lr=last["final_lr"],
        time_limited=any(r["time_limited"] for r in reports),
        stages=reports,
        world_size=world,
    )
    model.metadata["training"] = {**asdict(report), "summary": report.summary(), "config": _config_dict(config)}
    if show:
        console.print(report.summary(), highlight=False)
    return report


def _train_stage(run: _Run, stage: Stage, players: list[Player], epochs: int, deadline: float | None) -> dict:
    """Train one stage until `epochs`, early stopping or `deadline`; the best weights are kept."""
    model, config = run.model, run.config
    optimizers = [
        torch.optim.AdamW(
            p.parameters,
            lr=config.lr if p.lr is None else p.lr,
            betas=tuple(p.betas or config.betas),
            weight_decay=p.weight_decay,
        )
        for p in players
    ]
    ema = _Ema(model, config.ema_decay) if config.ema_decay else None
    scale, lowered_at = 1.0, None
    # The weights and optimiser states to fall back to: those of the last epoch
    # that ended finite (at first, the initial ones). Best is always one of them.
    good = _snapshot(model, optimizers, ema)
    best = (float("inf"), 0, good[0])
    epoch = epochs_run = 0
    stopped_early = time_limited = False
    train_bpd = None
    n_val = run.val_idx.numel()
    task = run.bar.add_task(f"training {model.name} ({stage.name})", total=epochs) if run.bar else None
    while epoch < epochs and not time_limited:
        epoch += 1
        model.train()
        result = _train_epoch(run, players, optimizers, ema, deadline)
        time_limited = result.time_limited
        problem, val = result.problem, None
        if problem is None and distributed.any_rank(not _finite_state(model), run.device):
            problem = "a weight became NaN or infinite"
        if problem is None and n_val:
            with _weights(model, ema):
                val = _validate(run, stage)
            if not math.isfinite(val):
                problem = f"validation score {val}"
        if problem is not None:
            _restore(model, optimizers, ema, good)  # even when giving up: never leave NaN weights behind
            if lowered_at is not None:
                model.eval()
                raise GenaugError(
                    f"training diverged twice ({problem} in epoch {epoch} of stage '{stage.name}', after lowering "
                    f"the learning rate {1 / scale:g}x in epoch {lowered_at}); lower --lr (now {config.lr:g})"
                )
            scale, lowered_at = scale * DIVERGENCE_LR_FACTOR, epoch
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] *= DIVERGENCE_LR_FACTOR
            if run.console is not None:
                back = f"the weights of epoch {epoch - 1}" if epoch > 1 else "the initial weights"
                run.console.print(
                    f"training diverged in epoch {epoch} ({problem}): back to {back}, learning rates lowered "
                    f"{1 / scale:g}x",
                    highlight=False,
                )
            epoch -= 1  # run this epoch again from the restored weights
            time_limited = deadline is not None and distributed.any_rank(time.perf_counter() >= deadline, run.device)
            continue
        epochs_run = epoch
        train_bpd = result.train_bpd
        good = _snapshot(model, optimizers, ema)
        score = val if val is not None else epoch  # no split: keep the last weights
        if val is None or score < best[0]:
            best = (score, epoch, _ema_or_model_state(model, ema, good))
        if run.bar:
            shown = f"train {train_bpd:.3f} bits/dim" if train_bpd is not None else f"loss {result.last_loss:.4f}"
            if val is not None:
                shown += f", val {val:.3f}"
            run.bar.update(task, advance=1, description=f"training {model.name} ({stage.name}: {shown})")
        if val is not None and epoch - best[1] >= config.patience:
            stopped_early = True
            break
    model.load_state_dict(best[2])
    final_lr = optimizers[0].param_groups[0]["lr"] if optimizers else None
    return {
        "name": stage.name,
        "epochs_run": epochs_run,
        "best_epoch": best[1],
        "best_val": float(best[0]) if n_val and math.isfinite(best[0]) else None,
        "train_bpd": None if train_bpd is None else float(train_bpd),
        "stopped_early": stopped_early,
        "lr_lowered_at_epoch": lowered_at,
        "final_lr": final_lr,
        "time_limited": time_limited,
    }


@dataclass
class _EpochResult:
    train_bpd: float | None  # mean training bits/dim, None when the family reports no finite nll
    last_loss: float
    problem: str | None  # what diverged, None when every step was finite
    time_limited: bool


def _batches(run: _Run) -> Iterator[tuple[torch.Tensor, int]]:
    """One epoch of (this rank's indices of a batch, the whole batch's size): a shuffle, or a weighted
    draw with replacement. Every rank draws the same order and takes its shard of each batch."""
    n_train = run.train_idx.numel()
    if run.train_weights is None:
        pick = torch.randperm(n_train, generator=run.generator)
    else:
        pick = torch.multinomial(run.train_weights, n_train, replacement=True, generator=run.generator)
    order = run.train_idx[pick.to(run.train_idx.device)]
    if run.train_window is not None:
        # A source read in blocks: the epoch's draws grouped by shuffle window, windows in a random
        # order, each window's draws in the random order they were drawn in.
        window_rank = torch.randperm(run.n_windows, generator=run.generator)
        order = order[torch.sort(window_rank[run.train_window[pick]], stable=True).indices]
    for start in range(0, order.numel(), run.config.batch_size):
        batch = order[start : start + run.config.batch_size]
        yield (batch if run.world == 1 else batch.tensor_split(run.world)[run.rank]), batch.numel()


def _train_epoch(run: _Run, players, optimizers, ema, deadline: float | None) -> _EpochResult:
    """One pass over the training split in rounds: each player takes its `steps` steps, one batch each.

    Stops at the first non-finite loss or gradient norm (before stepping on
    it), or when `deadline` passes.
    """
    model, config = run.model, run.config
    nll_sum, nll_count, last_loss = 0.0, 0, float("nan")
    batches = _batches(run)
    done = False
    while not done:
        for player, optimizer in zip(players, optimizers):
            for _ in range(player.steps):
                interrupt.check()  # a Ctrl-C a library swallowed still stops training
                batch, batch_size = next(batches, (None, 0))
                if batch is None:
                    done = True
                    break
                losses = loss = None
                if batch.numel():  # a shard of a last batch smaller than the world can be empty
                    y = None if run.y is None else run.y[batch]
                    with run.autocast:
                        losses = player.loss(run.fetch(batch), y, run.step)
                    loss = trimmed_loss(losses, config.trim_fraction if player.trim else None)
                # Gradients of every parameter are cleared: a generator's loss reaches the discriminator too.
                model.zero_grad(set_to_none=True)
                if loss is not None:
                    loss.backward()
                late = False
                if run.world > 1:
                    loss, step_nll, late = _all_reduce_step(run, player, losses, loss, batch.numel(), batch_size,
                                                            deadline)
                norm = torch.nn.utils.clip_grad_norm_(player.parameters, player.max_grad_norm or config.max_grad_norm)
                # One device sync per step for both checks; a NaN norm would also turn every clipped gradient NaN.
                if not bool(torch.isfinite(loss.detach()) & torch.isfinite(norm)):
                    value = float(loss.detach())
                    what = f"loss {value:g}" if not math.isfinite(value) else f"gradient norm {float(norm):g}"
                    return _EpochResult(None, value, f"{what} ({player.name})", False)
                optimizer.step()
                if player.clip_value is not None:
                    with torch.no_grad():
                        for p in player.parameters:
                            p.clamp_(-player.clip_value, player.clip_value)
                if ema is not None:
                    ema.update(model)
                run.step += 1
                run.seen += batch_size
                last_loss = float(loss.detach())
                if run.world > 1:
                    nll_sum, nll_count = nll_sum + step_nll[0], nll_count + step_nll[1]
                elif losses.nll is not None:
                    nll_sum += float(losses.nll.float().sum())
                    nll_count += batch.numel()
                if late or (run.world == 1 and deadline is not None and time.perf_counter() >= deadline):
                    return _EpochResult(_mean_bpd(nll_sum, nll_count, model), last_loss, None, True)
            if done:
                break
    return _EpochResult(_mean_bpd(nll_sum, nll_count, model), last_loss, None, False)


def _all_reduce_step(run: _Run, player: Player, losses: Losses | None, loss: torch.Tensor | None, k: int,
                     batch_size: int, deadline: float | None) -> tuple[torch.Tensor, tuple[float, int], bool]:
    """Make this rank's gradients those of the whole batch's mean loss, on every rank, in one all-reduce.

    This rank's `k` of the batch's `batch_size` images weigh k / batch_size;
    the loss, the nll sum and count, and whether the deadline has passed
    (checked here, before the reduction, so all ranks agree) travel in the
    same buffer. Returns the whole batch's loss (NaN on every rank when it
    was on any), (nll sum, nll count) and the deadline flag.
    """
    extras = torch.zeros(4, device=run.device)
    if loss is not None:
        extras[0] = loss.detach().float() * (k / batch_size)
        if losses.nll is not None:
            extras[1] = losses.nll.detach().float().sum()
            extras[2] = k
    extras[3] = float(deadline is not None and time.perf_counter() >= deadline)
    total = distributed.reduce_gradients(player.parameters, k / batch_size, extras)
    stats = total[1:].tolist()  # one read for the three
    return total[0], (stats[0], int(stats[1])), stats[2] > 0


def _mean_bpd(nll_sum: float, count: int, model: GenerativeModel) -> float | None:
    if not count:
        return None
    bpd = bits_per_dim(nll_sum / count, model.num_dims)
    return bpd if math.isfinite(bpd) else None  # trimmed-out images can have infinite nll


def trimmed_loss(losses: Losses, trim_fraction: float | None) -> torch.Tensor:
    """The batch loss, leaving out the `trim_fraction` highest per-image losses
    (losses without `per_image`, which do not compare across images, are not trimmed)."""
    per_image = losses.per_image
    if not trim_fraction or per_image is None:
        return losses.loss
    keep = max(1, int(round(per_image.numel() * (1.0 - trim_fraction))))
    return torch.topk(per_image, keep, largest=False, sorted=False).values.mean()


def auto_epochs(n_train: int) -> int:
    """Epochs that show the model about AUTO_IMAGES images, between 10 and 200."""
    return int(min(200, max(10, round(AUTO_IMAGES / max(n_train, 1)))))


@torch.inference_mode()
def _validate(run: _Run, stage: Stage) -> float:
    """Mean (or weighted mean) of the stage's validation score, with fixed noise so epochs compare fairly.

    Under torchrun each rank scores its shard of the split; the sums are all-reduced, so every rank
    gets the same score and takes the same early-stopping and best-epoch decisions.
    """
    run.model.eval()
    generator = torch.Generator(device=run.device).manual_seed(run.config.seed)
    idx_all = run.val_idx
    w = torch.ones(idx_all.numel(), dtype=torch.float64) if run.val_weights is None else run.val_weights
    if run.world > 1:
        idx_all, w = idx_all.tensor_split(run.world)[run.rank], w.tensor_split(run.world)[run.rank]
    total = 0.0
    for start in range(0, idx_all.numel(), VALIDATION_BATCH):
        idx = idx_all[start : start + VALIDATION_BATCH]
        y = None if run.y is None else run.y[idx]
        score = stage.validation(run.fetch(idx), y, generator=generator).double().reshape(-1)
        total += float((score.cpu() * w[start : start + idx.numel()]).sum())
    weight = float(w.sum())
    if run.world > 1:
        sums = distributed.all_reduce_sum(torch.tensor([total, weight], dtype=torch.float64, device=run.device))
        total, weight = sums.tolist()
    return total / max(weight, 1e-12)


def _check_source(images) -> object:
    """`images` when it is an image source (len, .shape (N, C, H, W), [indices]); one line when it is not."""
    shape = getattr(images, "shape", None)
    if not (hasattr(images, "__getitem__") and hasattr(images, "__len__") and shape is not None and len(shape) == 4):
        raise GenaugError(
            f"training images must be a uint8 tensor [N, C, H, W] or an image source with len(), .shape "
            f"(N, C, H, W) and [indices]; got {type(images).__name__}"
        )
    if len(images) != shape[0]:
        raise GenaugError(f"the image source has {len(images)} images but its shape says {shape[0]}")
    return images


def _read(source, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The images at CPU indices `idx` from an image source, checked, on `device`."""
    x = source[idx]
    want = (idx.numel(), *source.shape[1:])
    if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and tuple(x.shape) == tuple(want)):
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise GenaugError(
            f"the image source returned {got} for {idx.numel()} indices; it must return uint8 {list(want)}"
        )
    return x.to(device)


def _shuffle_windows(source, train_idx: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """(each training index's shuffle window, how many) for an image source that reads in blocks
    (`blocks()`: each block's first row and decoded bytes; `cache_bytes`: what it keeps decoded):
    consecutive blocks filling at most half its cache, so a batch that straddles two windows is
    still read from the cache. (None, 1) when one window holds everything: the in-memory shuffle."""
    if source is None or not (hasattr(source, "blocks") and hasattr(source, "cache_bytes")):
        return None, 1
    starts, nbytes = source.blocks()
    budget = max(1, int(source.cache_bytes) // 2)
    window_of_block = np.zeros(len(starts), dtype=np.int64)
    window, used = 0, 0
    for b, size in enumerate(np.asarray(nbytes, dtype=np.int64).tolist()):
        if used and used + size > budget:
            window, used = window + 1, 0
        used += size
        window_of_block[b] = window
    if window == 0:
        return None, 1
    block = np.searchsorted(np.asarray(starts, dtype=np.int64), train_idx.numpy(), side="right") - 1
    return torch.from_numpy(window_of_block[block]), window + 1


def _prepare_indices(run: _Run) -> torch.Tensor:
    """The training images a stage's `prepare` sees: all of them, or for an image source at most
    PREPARE_MAX_BYTES of them (a seeded subset, in file order)."""
    idx = run.train_idx
    if isinstance(run.images, torch.Tensor):
        return idx
    per_image = max(1, math.prod(run.images.shape[1:]))
    cap = max(1, PREPARE_MAX_BYTES // per_image)
    if idx.numel() <= cap:
        return idx
    keep = torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(run.config.seed))[:cap]
    return idx[keep].sort().values


def _prepare_images(run: _Run, idx: torch.Tensor) -> torch.Tensor:
    if isinstance(run.images, torch.Tensor):
        return run.images[idx]
    return torch.cat([run.fetch(idx[i : i + VALIDATION_BATCH]) for i in range(0, idx.numel(), VALIDATION_BATCH)])


class _Ema:
    """An exponential moving average of every floating-point weight and buffer."""

    def __init__(self, model: GenerativeModel, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: GenerativeModel) -> None:
        for k, v in model.state_dict().items():
            if k in self.state:
                self.state[k].lerp_(v.detach(), 1.0 - self.decay)


class _weights:
    """Context: the model holds its EMA weights inside, its trained weights again after."""

    def __init__(self, model: GenerativeModel, ema: _Ema | None) -> None:
        self.model, self.ema, self.saved = model, ema, None

    def __enter__(self):
        if self.ema is not None:
            self.saved = copy.deepcopy(self.model.state_dict())
            self.model.load_state_dict({**self.saved, **self.ema.state})
        return self.model

    def __exit__(self, *exc):
        if self.saved is not None:
            self.model.load_state_dict(self.saved)
        return False


def _ema_or_model_state(model: GenerativeModel, ema: _Ema | None, good: tuple) -> dict:
    """The weights to keep as best: the EMA's where there is one."""
    if ema is None:
        return good[0]
    return {**good[0], **copy.deepcopy(ema.state)}


def _snapshot(model, optimizers, ema) -> tuple:
    """Copies of the model's, the optimisers' and the EMA's state, to come back to after a divergence."""
    return (
        copy.deepcopy(model.state_dict()),
        [copy.deepcopy(o.state_dict()) for o in optimizers],
        None if ema is None else copy.deepcopy(ema.state),
    )


def _restore(model, optimizers, ema, good) -> None:
    model.load_state_dict(good[0])
    for opt, state in zip(optimizers, good[1]):
        opt.load_state_dict(copy.deepcopy(state))  # a copy: the optimiser updates its state in place
    if ema is not None:
        ema.state = copy.deepcopy(good[2])


def _finite_state(model) -> bool:
    """True when every floating-point weight and buffer is finite (one device sync)."""
    checks = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def _config_dict(config: TrainConfig) -> dict:
    return {k: v for k, v in asdict(config).items() if k != "progress"}


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(show: bool, console: Console | None):
    if not show:
        return _NoBar()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True)
