"""The one training loop: learns, is reproducible, stops early, restores the best weights."""

import pytest
import torch

from genaug.errors import GenaugError
from genaug.models.base import Losses
from genaug.models.vae import VAE
from genaug.train import TrainConfig, auto_epochs, resolve_device, train, trimmed_loss


def test_training_lowers_validation_bits_per_dim(digits):
    model = VAE(digits.shape)
    report = train(model, digits.images, config=TrainConfig(epochs=1, progress=False))
    first = report.best_val_bits_per_dim
    model = VAE(digits.shape)
    report = train(model, digits.images, config=TrainConfig(epochs=20, progress=False))
    assert report.best_val_bits_per_dim < first < 8
    assert model.metadata["training"]["epochs_run"] == report.epochs_run
    assert not model.training  # left in eval mode


def test_same_seed_same_weights(digits):
    def run(seed):
        torch.manual_seed(123)  # the same init, so only the loop's seed matters
        model = VAE(digits.shape)
        train(model, digits.images[:300], config=TrainConfig(epochs=2, seed=seed, progress=False))
        return model.state_dict()

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_early_stopping_restores_the_best_weights(digits):
    model = VAE(digits.shape)
    # With lr 0 validation never improves after epoch 1: stop after `patience` more.
    report = train(model, digits.images[:400], config=TrainConfig(epochs=30, lr=0.0, patience=2, progress=False))
    assert report.stopped_early and report.epochs_run == report.best_epoch + 2


def test_tiny_datasets_train_without_a_validation_split():
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    report = train(VAE((1, 8, 8)), x, config=TrainConfig(epochs=2, progress=False))
    assert report.best_val_bits_per_dim is None and report.epochs_run == 2


def test_bad_settings_are_clear_errors():
    with pytest.raises(GenaugError):
        train(VAE((1, 8, 8)), torch.zeros(0, 1, 8, 8, dtype=torch.uint8), config=TrainConfig(progress=False))
    with pytest.raises(GenaugError, match="trim"):
        train(VAE((1, 8, 8)), torch.zeros(30, 1, 8, 8, dtype=torch.uint8), config=TrainConfig(trim_fraction=1.5, progress=False))
    if not torch.cuda.is_available():
        with pytest.raises(GenaugError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(GenaugError):
        resolve_device("tpu")
    assert resolve_device("cpu").type == "cpu"


def test_trimmed_loss_leaves_out_the_worst_images():
    per_image = torch.tensor([1.0, 2.0, 3.0, 100.0])
    losses = Losses(per_image.mean(), per_image)
    assert trimmed_loss(losses, 0.25).item() == pytest.approx(2.0)
    assert trimmed_loss(losses, None).item() == pytest.approx(per_image.mean().item())


def test_auto_epochs_scale_with_dataset_size():
    assert auto_epochs(100) == 200 and auto_epochs(10_000) == 20 and auto_epochs(10**7) == 10
