"""Every kind of input a job takes gives the same images, labels and scores as the same data in an .npz."""

import io
import os
import re

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

import genaug
from genaug.data.readers import load_images
from genaug.errors import GenaugError
from genaug.train import TrainConfig

N = 40


@pytest.fixture(scope="module")
def pixels():
    """N 8x8 RGB images (channels last, as PIL and numpy hold them) and their labels."""
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 8)[None, None, :, None]
    x = np.clip(base + rng.normal(0, 30, (N, 8, 8, 3)), 0, 255).astype(np.uint8)
    return x, np.arange(N) % 3


@pytest.fixture(scope="module")
def npz(pixels, tmp_path_factory):
    path = tmp_path_factory.mktemp("npz") / "set.npz"
    np.savez(path, x=pixels[0], y=pixels[1])
    return path


class PILDataset(torch.utils.data.Dataset):
    """Items as torchvision datasets give them: (PIL image, int label)."""

    classes = ["a", "b", "c"]

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return Image.fromarray(self.x[i]), int(self.y[i])


class ToTensorDataset(PILDataset):
    """Items after torchvision's ToTensor: float CHW in [0, 1], label as a 0-d tensor."""

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]).permute(2, 0, 1).float() / 255, torch.tensor(self.y[i])


def hf_dataset(x, y):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    return datasets.Dataset.from_dict({"image": [Image.fromarray(i) for i in x], "label": y.tolist()}, features=features)


def memory_uri(npz_path):
    with fsspec.open("memory://genaug-test/set.npz", "wb") as f:
        f.write(npz_path.read_bytes())
    return "memory://genaug-test/set.npz"


KINDS = {
    "numpy NHWC": lambda px, npz: (px[0], px[1]),
    "tensor NCHW": lambda px, npz: (torch.from_numpy(px[0]).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(px[1])),
    "hf dataset": lambda px, npz: (hf_dataset(*px), None),
    "torch dataset of PIL": lambda px, npz: (PILDataset(*px), None),
    "torch dataset of ToTensor": lambda px, npz: (ToTensorDataset(*px), None),
    "file:// uri": lambda px, npz: (npz.as_uri(), None),
    "memory:// uri": lambda px, npz: (memory_uri(npz), None),
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_input_reads_as_the_npz_does(kind, pixels, npz):
    source, labels = KINDS[kind](pixels, npz)
    got = load_images(source, labels=labels)
    want = load_images(npz)
    assert torch.equal(got.images, want.images)
    np.testing.assert_array_equal(got.labels, want.labels)


@pytest.mark.parametrize("kind", ["tensor NCHW", "hf dataset", "torch dataset of PIL", "memory:// uri"])
def test_each_input_gives_the_npz_scores(kind, pixels, npz):
    source, labels = KINDS[kind](pixels, npz)
    data = load_images(source, labels=labels) if labels is not None else source
    config = TrainConfig(epochs=2, progress=False, seed=0)
    got = genaug.detect_outliers(data, train_config=config, score="nll")
    want = genaug.detect_outliers(load_images(npz), train_config=config, score="nll")
    np.testing.assert_array_equal(got.score, want.score)


def test_class_names_come_with_the_dataset(pixels):
    assert load_images(hf_dataset(*pixels)).class_names == ["a", "b", "c"]
    assert load_images(PILDataset(*pixels)).class_names == ["a", "b", "c"]


def test_a_hugging_face_selection_is_read_as_selected(pixels):
    ds = hf_dataset(*pixels).shuffle(seed=1).select(range(5))
    got = load_images(ds)
    assert got.images.shape == (5, 3, 8, 8)
    assert torch.equal(got.images[0], torch.from_numpy(np.array(ds[0]["image"])).permute(2, 0, 1))


def test_what_cannot_be_read_is_one_line(pixels, npz):
    import datasets

    cases = [
        (lambda: load_images(object()), "cannot read images from 'object' input"),
        (lambda: load_images(npz, labels=[0] * N), "labels= goes with an array"),
        (lambda: load_images(pixels[0], labels=[0, 1]), "2 labels for 40 images"),
        (lambda: load_images(pixels[0].astype(np.float32) * 2), "must be uint8, integers in 0..255 or floats in [0, 1]"),
        (lambda: load_images(datasets.DatasetDict({"train": hf_dataset(*pixels)})), "pick one, e.g. dataset['train']"),
        (lambda: load_images("memory://genaug-test/missing.npz"), "no such file or folder"),
        (lambda: load_images("nosuchscheme://x/y.npz"), "cannot open nosuchscheme://x/y.npz"),
    ]
    for call, message in cases:
        with pytest.raises(GenaugError, match=re.escape(message)) as info:
            call()
        assert "\n" not in str(info.value)


def test_a_remote_folder_keeps_its_class_folders_and_ids(tmp_path):
    for name, cls in [("a/1.png", "a"), ("a/2.png", "a"), ("b/3.png", "b")]:
        buf = io.BytesIO()
        Image.fromarray(np.full((4, 4), len(name), np.uint8)).save(buf, format="PNG")
        with fsspec.open(f"memory://genaug-folder/{name}", "wb") as f:
            f.write(buf.getvalue())
    got = load_images("memory://genaug-folder")
    assert got.ids == ["a/1.png", "a/2.png", "b/3.png"]
    assert got.class_names == ["a", "b"] and got.labels.tolist() == [0, 0, 1]


def mixed_folder(root):
    """Class folders with every extension either reader might take, nested folders and upper case."""
    rng = np.random.default_rng(1)
    files = ["cat/z.png", "cat/b.JPG", "cat/sub/a.ppm", "cat/sub-x/c.pgm", "cat/m.gif", "cat-2/k.bmp",
             "cat-2/j.webp", "dog/y.tiff", "dog/x.txt", "dog/deep/er/w.png"]
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".txt":
            path.write_text("not an image")
            continue
        fmt = {".jpg": "JPEG", ".ppm": "PPM", ".pgm": "PPM", ".tiff": "TIFF", ".webp": "WEBP"}.get(path.suffix.lower())
        pixels = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(pixels[..., 0] if path.suffix == ".pgm" else pixels).save(path, format=fmt)
    return root


def test_a_folder_reads_as_torchvision_imagefolder_does(tmp_path):
    from torchvision.datasets import ImageFolder

    root = mixed_folder(tmp_path / "data")
    ours, theirs = load_images(root, mode="rgb"), ImageFolder(root)
    assert ours.ids == [os.path.relpath(p, root) for p, _ in theirs.samples]
    assert ours.labels.tolist() == theirs.targets and ours.class_names == theirs.classes
    for i in range(len(theirs)):  # the same pixels row by row (lossless formats)
        if not ours.ids[i].lower().endswith((".jpg", ".webp")):
            assert np.array_equal(np.asarray(theirs[i][0]), ours.images[i].permute(1, 2, 0).numpy())


def test_results_line_up_with_another_dataset_by_id(tmp_path):
    from torchvision.datasets import ImageFolder

    root = mixed_folder(tmp_path / "data")
    data = load_images(root, mode="rgb")
    result = genaug.rebalance(data, train_config=TrainConfig(epochs=1, progress=False), components=2)
    folder = ImageFolder(root)
    by_id = dict(zip(data.ids, result.weights))
    want = [by_id[os.path.relpath(p, root)] for p, _ in folder.samples]
    np.testing.assert_array_equal(result.aligned(folder), want)
    reversed_ids = list(reversed(data.ids))
    np.testing.assert_array_equal(result.aligned(reversed_ids, "rarity"), result.rarity[::-1])
    assert torch.equal(result.sampler(dataset=folder).weights, torch.as_tensor(want, dtype=torch.double))
    with pytest.raises(GenaugError, match="1 of 8 rows have no result"):
        result.aligned(data.ids[1:] + ["cat/unknown.png"])


def test_an_imageset_is_a_torch_dataset_of_the_rows_genaug_scores(pixels):
    data = load_images(pixels[0], labels=pixels[1])
    image, label = data[5]
    assert torch.equal(image, data.images[5]) and label == pixels[1][5]
    loader = torch.utils.data.DataLoader(data.with_transform(lambda t: t.float() / 255), batch_size=16)
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and x.shape == (16, 3, 8, 8) and torch.equal(y, torch.as_tensor(pixels[1][:16]))
    assert data.transform is None  # with_transform returned a new view
    assert load_images(pixels[0])[0][1] == -1  # unlabelled
    assert len(repr(data)) < 100 and "40 images of 3x8x8" in repr(data)
