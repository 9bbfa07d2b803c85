"""Training from disk: Parquet input over the streaming threshold trains batch by batch from row groups."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from genaug.cli.app import main
from genaug.data.disk_images import DiskImageSet, ImageRows, training_data
from genaug.data.imageset import ImageSet
from genaug.data.parquet import write_image_table
from genaug.data.readers import load_images
from genaug.data.streaming import open_parquet
from genaug.errors import GenaugError
from genaug.fit import fit
from genaug.models.store import background_of, load_model
from genaug.models.vae import VAE
from genaug.train import TrainConfig, train

GROUP = 100  # rows per row group


@pytest.fixture(scope="module")
def parquet_file(digits, tmp_path_factory):
    """600 labelled digits in row groups of GROUP rows."""
    path = tmp_path_factory.mktemp("fit") / "digits.parquet"
    write_image_table(path, digits.subset(np.arange(600)), genaug_metadata={})
    pq.write_table(pq.read_table(path), path, row_group_size=GROUP)
    return path


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_threshold_decides_between_memory_and_disk(parquet_file, monkeypatch):
    monkeypatch.delenv("GENAUG_STREAM_BYTES", raising=False)
    assert isinstance(training_data(parquet_file), ImageSet)  # 600 8x8 images: far under 1 GiB
    monkeypatch.setenv("GENAUG_STREAM_BYTES", str(600 * 64 - 1))
    assert isinstance(training_data(parquet_file), DiskImageSet)
    monkeypatch.setenv("GENAUG_STREAM_BYTES", str(600 * 64))
    assert isinstance(training_data(parquet_file), ImageSet)
    assert isinstance(training_data("digits"), ImageSet)  # only Parquet streams
    monkeypatch.setenv("GENAUG_STREAM_BYTES", "lots")
    with pytest.raises(GenaugError, match="GENAUG_STREAM_BYTES must be a whole number"):
        training_data(parquet_file)


def test_fitting_from_disk_gives_the_in_memory_model_and_calibration(parquet_file, monkeypatch):
    monkeypatch.setenv("GENAUG_STREAM_BYTES", "0")
    disk, memory = training_data(parquet_file), load_images(parquet_file)
    assert isinstance(disk, DiskImageSet) and len(disk) == len(memory) and disk.shape == memory.shape
    assert disk.fingerprint() == memory.fingerprint() and disk.num_classes == memory.num_classes
    config = TrainConfig(epochs=1, seed=3, progress=False)
    a = fit(disk, conditional=True, train_config=config, console=None)
    b = fit(memory, conditional=True, train_config=config, console=None)
    assert _same_weights(a, b) and _same_weights(background_of(a), background_of(b))
    assert a.metadata["calibration"] == b.metadata["calibration"] and a.metadata["data"] == b.metadata["data"]


class BlockSource:
    """An image source over a tensor read in blocks of GROUP rows, caching `cache_bytes` of them,
    that records the rows each read asks for."""

    def __init__(self, x: torch.Tensor, cache_bytes: int) -> None:
        self.x, self.shape, self.cache_bytes, self.reads = x, tuple(x.shape), cache_bytes, []

    def __len__(self) -> int:
        return self.shape[0]

    def blocks(self):
        starts = np.arange(0, self.shape[0], GROUP)
        return starts, np.minimum(GROUP, self.shape[0] - starts) * int(np.prod(self.shape[1:]))

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        self.reads.append(idx.clone())
        return self.x[idx].clone()


@pytest.mark.parametrize("weighted", [False, True])
def test_a_source_larger_than_its_cache_is_shuffled_within_windows_of_blocks(digits, weighted):
    x = digits.images[:1000]
    block = GROUP * 64
    source = BlockSource(x, cache_bytes=4 * block)  # windows of two blocks: five windows
    config = TrainConfig(epochs=2, batch_size=32, val_fraction=0.1, progress=False, seed=1)
    weights = torch.linspace(0.5, 2.0, 1000, dtype=torch.float64) if weighted else None
    train(VAE((1, 8, 8), latent_dim=4, channels=8, hidden=32), source, config=config, sample_weights=weights)
    val = [r for r in source.reads if r.numel() == 100]
    batches = [r for r in source.reads if r.numel() != 100]
    assert len(val) == 2 and all(torch.equal(v, v.sort().values) for v in val)  # validation in file order
    held_out = set(val[0].tolist())
    per_epoch = len(batches) // 2
    for epoch in (batches[:per_epoch], batches[per_epoch:]):
        rows = torch.cat(epoch)
        assert rows.numel() == 900 and not held_out & set(rows.tolist())
        if not weighted:  # a shuffle: each training image once
            assert sorted(rows.tolist()) == sorted(set(range(1000)) - held_out)
        windows = rows // (2 * GROUP)
        # Grouped by window: each window's draws come in one run, so a batch spans at most two windows.
        changes = int((windows[1:] != windows[:-1]).sum())
        assert changes == len(torch.unique(windows)) - 1
        assert all(len(torch.unique(b // (2 * GROUP))) <= 2 for b in epoch)


def test_a_split_of_a_parquet_source_reads_its_own_rows(parquet_file):
    memory = load_images(parquet_file)
    images = open_parquet(parquet_file).images(cache_bytes=2 * GROUP * 64)
    rows = np.array([0, 5, 99, 100, 350, 599])
    view = ImageRows(images, rows)
    assert len(view) == 6 and view.shape == (6, 1, 8, 8)
    assert torch.equal(view[torch.arange(6)], memory.images[torch.from_numpy(rows)])
    starts, nbytes = view.blocks()  # the row groups holding rows: 0, 1, 3 and 5, where they start here
    assert starts.tolist() == [0, 3, 4, 5] and nbytes.tolist() == [GROUP * 64] * 4
    disk = DiskImageSet(images, memory.labels, memory.class_names, str(parquet_file))
    part = disk.subset(rows).subset(np.array([1, 4]))
    assert torch.equal(part.load().images, memory.images[[5, 350]])
    np.testing.assert_array_equal(part.labels, memory.labels[[5, 350]])


def test_genaug_fit_streams_big_parquet_and_the_model_detects(parquet_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENAUG_STREAM_BYTES", "0")
    out = tmp_path / "m.safetensors"
    code = main(["fit", str(parquet_file), "-o", str(out), "--epochs", "1", "--no-llr", "--json", "-q"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_images"] == 600 and doc["n_calibration"] == 120
    model = load_model(out)
    assert model.metadata["data"]["fingerprint"] == load_images(parquet_file).fingerprint()
    scores = tmp_path / "s.parquet"
    assert main(["detect-outliers", str(parquet_file), "--model-path", str(out), "-o", str(scores), "-q"]) == 0
    assert pq.read_table(scores).num_rows == 600


def test_a_pipeline_fit_step_trains_from_disk_as_genaug_fit_does(parquet_file, tmp_path, monkeypatch):
    from genaug.pipelines import Pipeline

    monkeypatch.setenv("GENAUG_STREAM_BYTES", "0")
    spec = tmp_path / "p.yaml"
    spec.write_text(f"source: {parquet_file}\nmodel:\n  family: vae\n  epochs: 1\n  seed: 0\n"
                    "steps:\n  - fit:\n      name: model\n      output: m.safetensors\n      llr: false\n")  # fmt: skip
    Pipeline.from_yaml(spec).run(console=None)
    piped = load_model(tmp_path / "m.safetensors")
    direct = fit(load_images(parquet_file), llr=False, train_config=TrainConfig(epochs=1, seed=0), console=None)
    assert _same_weights(piped, direct) and piped.metadata["calibration"] == direct.metadata["calibration"]
