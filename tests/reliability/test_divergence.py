"""Training that diverges recovers once at a lower learning rate, or stops in one line; never NaN weights."""

import pytest
import torch
from torch import nn

from genaug.cli.app import main
from genaug.errors import GenaugError
from genaug.models import GenerativeModel, load_model
from genaug.models.base import Losses
from genaug.models.vae import VAE
from genaug.train import DIVERGENCE_LR_FACTOR, TrainConfig, train

TINY = {"latent_dim": 2, "channels": 4, "hidden": 16}


def images(n=60, seed=0):
    return torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def finite(model):
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


class Flaky(GenerativeModel):
    """One weight pulled towards 1 by (w - 1)^2; chosen training steps go wrong.

    `faults` maps a training-step number (1-based, counted in train mode only)
    to what goes wrong there: "loss" (NaN loss, and the weight is corrupted to
    NaN as a blown-up step would leave it), "grad" (finite loss, infinite
    gradient) or "buffer" (a buffer turns NaN, all losses finite). `val_faults`
    are validation calls (1-based) whose score is NaN.
    """

    name = "flaky"

    def __init__(self, image_shape=(1, 8, 8), num_classes=0, *, faults=None, val_faults=()):
        super().__init__(image_shape, num_classes)
        self.w = nn.Parameter(torch.zeros(()))
        self.register_buffer("running", torch.zeros(()))
        self.faults, self.val_faults = dict(faults or {}), set(val_faults)
        self.steps = self.val_calls = 0

    def training_losses(self, x, y=None, *, step=0):
        per_image = ((self.w - 1.0) ** 2).expand(x.shape[0])
        if not self.training:
            self.val_calls += 1
            if self.val_calls in self.val_faults:
                per_image = per_image * float("nan")
            return Losses(per_image.mean(), per_image)
        self.steps += 1
        fault = self.faults.get(self.steps)
        if fault == "loss":
            with torch.no_grad():
                self.w.fill_(float("nan"))
            per_image = per_image * float("nan")
        elif fault == "grad":
            per_image = per_image + torch.sqrt(self.w - self.w.detach())  # value 0, gradient inf
        elif fault == "buffer":
            self.running.fill_(float("nan"))
        return Losses(per_image.mean(), per_image)


def reference_weight(lr, good_steps, lowered_steps):
    """The weight after `good_steps` AdamW steps at `lr`, then `lowered_steps` more at the lowered
    rate, continuing the same optimizer state: what a recovery must reproduce exactly."""
    w = nn.Parameter(torch.zeros(()))
    opt = torch.optim.AdamW([w], lr=lr, weight_decay=0.0)
    for i in range(good_steps + lowered_steps):
        if i == good_steps:
            opt.param_groups[0]["lr"] = lr * DIVERGENCE_LR_FACTOR
        opt.zero_grad()
        ((w - 1.0) ** 2).backward()
        opt.step()
    return w.detach()


# 30 images: 3 for validation, 27 for training, one batch of 27 = one step per epoch.
CONFIG = dict(epochs=4, lr=0.1, batch_size=27, progress=False)


@pytest.mark.parametrize("fault", ["loss", "grad", "buffer"])
def test_one_divergence_restores_the_last_good_epoch_and_lowers_the_lr(fault):
    model = Flaky(faults={3: fault})
    report = train(model, images(30), config=TrainConfig(**CONFIG))
    assert report.lr_lowered_at_epoch == 3 and report.final_lr == pytest.approx(0.1 * DIVERGENCE_LR_FACTOR)
    assert report.epochs_run == 4 and finite(model)
    # "buffer" stepped before the fault was seen at the end of epoch 3: that step is undone too.
    torch.testing.assert_close(model.w.detach(), reference_weight(0.1, 2, 2), rtol=0, atol=0)
    training = model.metadata["training"]
    assert training["lr_lowered_at_epoch"] == 3 and "lr lowered to 0.01" in training["summary"]


def test_a_nan_validation_score_is_a_divergence_too():
    model = Flaky(val_faults={2})  # validation after epoch 2
    report = train(model, images(30), config=TrainConfig(**CONFIG))
    assert report.lr_lowered_at_epoch == 2 and finite(model)
    torch.testing.assert_close(model.w.detach(), reference_weight(0.1, 1, 3), rtol=0, atol=0)
    assert report.best_val_bits_per_dim is not None and report.best_epoch == 4


def test_a_second_divergence_is_one_line_and_leaves_finite_weights():
    model = Flaky(faults={2: "loss", 4: "loss"})
    with pytest.raises(GenaugError, match=r"training diverged twice .*; lower --lr \(now 0\.1\)") as e:
        train(model, images(30), config=TrainConfig(**CONFIG))
    assert "\n" not in str(e.value)
    assert finite(model)  # the last good weights, not the NaN ones


def test_a_huge_learning_rate_recovers_or_stops_cleanly_never_nan():
    model = VAE((1, 8, 8), **TINY)
    try:
        report = train(model, images(), config=TrainConfig(epochs=2, lr=1e10, progress=False))
    except GenaugError as e:
        assert "diverged" in str(e) and "\n" not in str(e)
    else:
        assert report.lr_lowered_at_epoch is not None and report.final_lr < 1e10
    assert finite(model)


class FlakyVAE(VAE):
    """A real VAE (random reparameterisation noise and all) whose 5th training loss is NaN."""

    def training_losses(self, x, y=None, *, step=0):
        losses = super().training_losses(x, y, step=step)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 5:
            losses.loss = losses.loss * float("nan")
        return losses


def test_a_recovered_run_is_reproducible():
    def run():
        torch.manual_seed(0)
        model = FlakyVAE((1, 8, 8), **TINY)
        report = train(model, images(), config=TrainConfig(epochs=3, batch_size=16, progress=False))
        return model.state_dict(), report

    (a, ra), (b, rb) = run(), run()
    assert ra.lr_lowered_at_epoch == rb.lr_lowered_at_epoch == 2  # 4 steps per epoch: call 5 is in epoch 2
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fit_with_a_huge_lr_exits_0_with_finite_weights_or_2_in_one_line(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    code = main(["fit", "digits", "-o", str(out), "--epochs", "1", "--lr", "1e10", "--quiet"])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 0:
        assert finite(load_model(out))
    else:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "diverged" in lines[0], err
        assert not out.exists()
