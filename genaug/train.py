"""The one training loop, for every family.

It knows only the model contract: `training_losses` (its "loss" is
minimised; its "nll", when present, is shown in bits/dim) and `nll` for
validation. Device is automatic (CUDA when present), bf16 autocast on CUDA,
float32 on CPU; runs are seeded and reproducible on CPU; a validation split
drives early stopping and the best weights are restored at the end.

Divergence (a NaN or infinite loss, gradient norm, weight or validation
score) is survived once: the weights and optimizer state of the last good
epoch come back, the learning rate is lowered, and the epoch runs again. A
second divergence is one GenaugError line. A trained model never holds NaN.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from genaug.errors import GenaugError
from genaug.models.base import GenerativeModel, bits_per_dim

MIN_IMAGES_FOR_VALIDATION = 20
AUTO_IMAGES = 200_000
# After the first divergence the learning rate is multiplied by this; there is no second chance.
DIVERGENCE_LR_FACTOR = 0.1


@dataclass
class TrainConfig:
    """Training settings. The defaults fit 10,000 28x28 images in well under two
    minutes on a 2-core CPU and converge on small datasets like digits.

    `epochs=None` picks enough epochs to show the model about
    `AUTO_IMAGES` images (at least 10, at most 200): small datasets need
    many passes, large ones few.
    """

    epochs: int | None = None
    batch_size: int = 128
    lr: float = 3e-3
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


@dataclass
class TrainReport:
    """What a training run did; stored in `model.metadata["training"]`."""

    family: str
    epochs_run: int
    best_epoch: int
    best_val_bits_per_dim: float | None
    train_bits_per_dim: float | None
    seconds: float
    images_per_second: float
    device: str
    stopped_early: bool
    # Set when training diverged once and went on from the last good epoch at a lower rate.
    lr_lowered_at_epoch: int | None = None
    final_lr: float | None = None

    def summary(self) -> str:
        """One line for humans."""
        val = "no validation split" if self.best_val_bits_per_dim is None else f"val {self.best_val_bits_per_dim:.3f} bits/dim"
        lowered = (
            ""
            if self.lr_lowered_at_epoch is None
            else f"; diverged in epoch {self.lr_lowered_at_epoch}, lr lowered to {self.final_lr:g}"
        )
        return (
            f"trained {self.family} for {self.epochs_run} epochs (best {self.best_epoch}) in {self.seconds:.1f} s, "
            f"{self.images_per_second:,.0f} img/s on {self.device}; {val}{lowered}"
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


def train(
    model: GenerativeModel,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    config: TrainConfig | None = None,
    *,
    sample_weights: torch.Tensor | None = None,
    console: Console | None = None,
) -> TrainReport:
    """Train `model` on uint8 `images` (and `labels` for conditional families) in place.

    With `sample_weights` [N], each epoch draws its images with replacement in
    proportion to them (DB-VAE's adaptive resampling) instead of a shuffle.
    """
    config = config or TrainConfig()
    n = images.shape[0]
    if n == 0:
        raise GenaugError("no images to train on")
    if (config.epochs is not None and config.epochs < 1) or config.batch_size < 1:
        raise GenaugError("epochs and batch size must be positive")
    if not (math.isfinite(config.lr) and config.lr >= 0):
        raise GenaugError(f"lr must be a finite non-negative number, got {config.lr}")
    if config.trim_fraction is not None and not 0 <= config.trim_fraction < 1:
        raise GenaugError(f"--trim must be in [0, 1), got {config.trim_fraction}")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)  # parameter init noise in families that draw it lazily
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device)
    x_all = images.to(device)
    y_all = None if labels is None else labels.to(device)

    perm = torch.randperm(n, generator=generator)
    n_val = int(round(config.val_fraction * n)) if n >= MIN_IMAGES_FOR_VALIDATION else 0
    val_idx, train_idx = perm[:n_val].to(device), perm[n_val:].to(device)
    epochs = config.epochs or auto_epochs(train_idx.numel())
    if sample_weights is not None:
        sample_weights = torch.as_tensor(sample_weights, dtype=torch.float64)
        if sample_weights.shape != (n,) or not torch.isfinite(sample_weights).all() or (sample_weights < 0).any():
            raise GenaugError(f"sample weights must be {n} finite non-negative numbers")
        train_weights = sample_weights[train_idx.cpu()]
        # Validation follows the same weighting, so early stopping and the best
        # weights judge the objective being trained, not the unweighted one.
        val_weights = sample_weights[val_idx.cpu()]
    else:
        val_weights = None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    # Training noise (reparameterisation) comes from the global RNG of the device; seed it too.
    if device.type == "cuda":
        torch.cuda.manual_seed_all(config.seed)

    lr, lowered_at = config.lr, None
    # The weights and optimizer state to fall back to: those of the last epoch
    # that ended finite (at first, the initial ones). Best is always one of them.
    good = _snapshot(model, optimizer)
    best = (float("inf"), 0, good[0])
    epoch, epochs_run, stopped_early, train_bpd, seen = 0, 0, False, None, 0
    show = config.progress and console is not None
    started = time.perf_counter()
    with _progress(show, console) as bar:
        task = bar.add_task(f"training {model.name}", total=epochs) if bar else None
        while epoch < epochs:
            epoch += 1
            model.train()
            if sample_weights is None:
                pick = torch.randperm(train_idx.numel(), generator=generator)
            else:
                pick = torch.multinomial(train_weights, train_idx.numel(), replacement=True, generator=generator)
            order = train_idx[pick.to(device)]
            step = _train_epoch(model, optimizer, x_all, y_all, order, config, autocast)
            seen += step.seen
            problem, val_bpd = step.problem, None
            if problem is None and not _finite_state(model):
                problem = "a weight became NaN or infinite"
            if problem is None and n_val:
                val_bpd = _validate(model, x_all, y_all, val_idx, config, val_weights)
                if not math.isfinite(val_bpd):
                    problem = f"validation score {val_bpd}"
            if problem is not None:
                model.load_state_dict(good[0])  # even when giving up: never leave NaN weights behind
                if lowered_at is not None:
                    model.eval()
                    raise GenaugError(
                        f"training diverged twice ({problem} in epoch {epoch}, after lowering the learning rate "
                        f"to {lr:g} in epoch {lowered_at}); lower --lr (now {config.lr:g})"
                    )
                lr, lowered_at = lr * DIVERGENCE_LR_FACTOR, epoch
                optimizer.load_state_dict(copy.deepcopy(good[1]))  # a copy: the optimizer updates its state in place
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if show:
                    back = f"the weights of epoch {epoch - 1}" if epoch > 1 else "the initial weights"
                    console.print(
                        f"training diverged in epoch {epoch} ({problem}): back to {back}, learning rate lowered to {lr:g}",
                        highlight=False,
                    )
                epoch -= 1  # run this epoch again from the restored weights
                continue
            epochs_run = epoch
            train_bpd = step.train_bpd
            good = _snapshot(model, optimizer)
            score = val_bpd if val_bpd is not None else epoch  # no split: keep the last weights
            if val_bpd is None or score < best[0]:
                best = (score, epoch, good[0])
            if bar:
                shown = f"train {train_bpd:.3f}" if train_bpd is not None else f"loss {step.last_loss:.4f}"
                if val_bpd is not None:
                    shown += f", val {val_bpd:.3f}"
                bar.update(task, advance=1, description=f"training {model.name} ({shown} bits/dim)")
            if val_bpd is not None and epoch - best[1] >= config.patience:
                stopped_early = True
                break
    seconds = time.perf_counter() - started
    model.load_state_dict(best[2])
    model.eval()
    report = TrainReport(
        family=model.name,
        epochs_run=epochs_run,
        best_epoch=best[1],
        best_val_bits_per_dim=float(best[0]) if n_val and math.isfinite(best[0]) else None,
        train_bits_per_dim=None if train_bpd is None else float(train_bpd),
        seconds=seconds,
        images_per_second=seen / max(seconds, 1e-9),
        device=str(device),
        stopped_early=stopped_early,
        lr_lowered_at_epoch=lowered_at,
        final_lr=lr,
    )
    model.metadata["training"] = {**asdict(report), "summary": report.summary(), "config": _config_dict(config)}
    if show:
        console.print(report.summary(), highlight=False)
    return report


@dataclass
class _EpochResult:
    seen: int  # images stepped on
    train_bpd: float | None  # mean training bits/dim, None when the family reports no finite nll
    last_loss: float
    problem: str | None  # what diverged, None when every step was finite


def _train_epoch(model, optimizer, x_all, y_all, order, config: TrainConfig, autocast) -> _EpochResult:
    """One pass over `order`; stops at the first non-finite loss or gradient norm, before stepping on it."""
    nll_sum, nll_count, seen, loss = 0.0, 0, 0, None
    for start in range(0, order.numel(), config.batch_size):
        batch = order[start : start + config.batch_size]
        with autocast:
            losses = model.training_losses(x_all[batch], None if y_all is None else y_all[batch])
        loss = trimmed_loss(losses, config.trim_fraction)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        # One device sync per step for both checks; a NaN norm would also turn every clipped gradient NaN.
        if not bool(torch.isfinite(loss.detach()) & torch.isfinite(norm)):
            value = float(loss.detach())
            what = f"loss {value:g}" if not math.isfinite(value) else f"gradient norm {float(norm):g}"
            return _EpochResult(seen, None, value, what)
        optimizer.step()
        seen += batch.numel()
        if "nll" in losses:
            nll_sum += float(losses["nll"].float().sum())
            nll_count += batch.numel()
    train_bpd = bits_per_dim(nll_sum / nll_count, model.num_dims) if nll_count else None
    if train_bpd is not None and not math.isfinite(train_bpd):
        train_bpd = None  # trimmed-out images can have infinite nll while the trained loss is finite
    return _EpochResult(seen, train_bpd, float(loss.detach()) if loss is not None else float("nan"), None)


def _snapshot(model, optimizer) -> tuple[dict, dict]:
    """Copies of the model's and the optimizer's state, to come back to after a divergence."""
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())


def _finite_state(model) -> bool:
    """True when every floating-point weight and buffer is finite (one device sync)."""
    checks = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def trimmed_loss(losses: dict, trim_fraction: float | None):
    """The batch loss, leaving out the `trim_fraction` highest per-image losses
    (families without "per_image" losses are not trimmed)."""
    per_image = losses.get("per_image")
    if not trim_fraction or per_image is None:
        return losses["loss"]
    keep = max(1, int(round(per_image.numel() * (1.0 - trim_fraction))))
    return torch.topk(per_image, keep, largest=False, sorted=False).values.mean()


def auto_epochs(n_train: int) -> int:
    """Epochs that show the model about AUTO_IMAGES images, between 10 and 200."""
    return int(min(200, max(10, round(AUTO_IMAGES / max(n_train, 1)))))


@torch.inference_mode()
def _validate(model, x_all, y_all, val_idx, config: TrainConfig, weights=None) -> float:
    """Mean (or `weights`-weighted mean) validation bits/dim with fixed noise, so epochs compare fairly."""
    model.eval()
    generator = torch.Generator(device=x_all.device).manual_seed(config.seed)
    w = torch.ones(val_idx.numel(), dtype=torch.float64) if weights is None else weights
    total = 0.0
    for start in range(0, val_idx.numel(), 1024):
        idx = val_idx[start : start + 1024]
        y = None if y_all is None else y_all[idx]
        if "nll" in model.capabilities:
            per_image = bits_per_dim(model.nll(x_all[idx], y, generator=generator).double(), model.num_dims)
        else:
            per_image = model.training_losses(x_all[idx], y)["loss"].double().expand(idx.numel())
        total += float((per_image.cpu() * w[start : start + idx.numel()]).sum())
    return total / max(float(w.sum()), 1e-12)


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
