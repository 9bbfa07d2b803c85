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


class CountingSource:
    """An image source over a tensor (as a Parquet reader would be) that records every read's size."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x, self.shape, self.reads = x, tuple(x.shape), []

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        self.reads.append(idx.numel())
        return self.x[idx].clone()


def smooth_images(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.linspace(0, 255, 8).expand(1, 8, 8)
    return (base + torch.randint(-30, 31, (n, 1, 8, 8), generator=g)).clamp(0, 255).to(torch.uint8)


def test_an_image_source_is_read_one_batch_at_a_time_and_trains_the_same_model_as_the_tensor():
    x = smooth_images(150)  # 135 to train on (8 batches of 16 and one of 7), 15 to validate on
    config = TrainConfig(epochs=2, batch_size=16, progress=False)
    models = []
    for images in (x, source := CountingSource(x)):
        torch.manual_seed(0)
        models.append(VAE((1, 8, 8), latent_dim=4, channels=8, hidden=32))
        train(models[-1], images, config=config)
    assert source.reads == 2 * ([16] * 8 + [7] + [15])  # per epoch: the batches, then the validation split
    a, b = (m.state_dict() for m in models)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stage_is_prepared_on_a_bounded_seeded_subset_of_an_image_source(monkeypatch):
    import genaug.train as loop
    from genaug.models.ae import Autoencoder

    x = smooth_images(100)  # 90 training images
    seen = []
    def trained(images):
        torch.manual_seed(0)
        model = Autoencoder((1, 8, 8), latent_dim=4, channels=8, hidden=32, mixture_components=2)
        fit_prior = model.fit_prior
        model.fit_prior = lambda x, y=None: (seen.append(x.clone()), fit_prior(x, y))
        train(model, images, config=TrainConfig(epochs=1, batch_size=16, progress=False))
        return model.state_dict()

    # Under the bound, a source gives `prepare` the training split the tensor does: the same model.
    a, b = trained(x), trained(CountingSource(x))
    assert torch.equal(seen[0], seen[1]) and len(seen[0]) == 90
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Over it, at most PREPARE_MAX_BYTES of distinct training images, read in pieces.
    monkeypatch.setattr(loop, "PREPARE_MAX_BYTES", 40 * 64)
    monkeypatch.setattr(loop, "VALIDATION_BATCH", 16)
    source = CountingSource(x)
    trained(source)
    assert len(seen[2]) == 40 and len(torch.unique(seen[2].flatten(1), dim=0)) == 40
    assert max(source.reads) <= 16


def test_a_bad_image_source_is_one_clear_line():
    model = VAE((1, 8, 8), latent_dim=4, channels=8, hidden=32)
    with pytest.raises(GenaugError, match="uint8 tensor .* or an image source"):
        train(model, [[0] * 64] * 30, config=TrainConfig(epochs=1, progress=False))

    class FloatSource(CountingSource):
        def __getitem__(self, idx):
            return super().__getitem__(idx).float()

    with pytest.raises(GenaugError, match=r"returned torch.float32 \[16, 1, 8, 8\].*must return uint8"):
        train(model, FloatSource(smooth_images(30)), config=TrainConfig(epochs=1, batch_size=16, progress=False))
