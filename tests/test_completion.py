"""Completion: the kept part of every image is untouched, the rest is drawn by the
model, reproducibly; the output holds each original beside its completions."""

import io
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import genaug
from genaug.completion import complete, keep_mask
from genaug.data.imageset import ImageSet
from genaug.errors import GenaugError
from genaug.models.registry import build_model
from genaug.models.store import save_model
from genaug.train import TrainConfig, train


@pytest.fixture(scope="module")
def model(digits):
    torch.manual_seed(0)
    m = build_model("pixelcnn", (1, 8, 8), digits.num_classes, channels=12, layers=2, head_channels=12)
    train(m, digits.images[:400], digits.label_tensor()[:400], TrainConfig(epochs=2, progress=False))
    m.metadata["class_names"] = digits.class_names
    return m


@pytest.fixture(scope="module")
def few(digits):
    return digits.subset(np.arange(12))


def test_kept_rows_are_untouched_and_the_rest_is_drawn(model, few):
    out = complete(model, few, keep_rows=3, completions=2, seed=0)
    assert len(out.data) == 24 and out.data.images.shape == (24, 1, 8, 8)
    np.testing.assert_array_equal(out.source_index, np.repeat(np.arange(12), 2))
    np.testing.assert_array_equal(out.completion, np.tile([0, 1], 12))
    originals = few.images[torch.from_numpy(out.source_index)]
    assert torch.equal(out.data.images[:, :, :3], originals[:, :, :3])
    assert not torch.equal(out.data.images[:, :, 3:], originals[:, :, 3:])
    # Two completions of one image differ below the kept rows.
    assert not torch.equal(out.data.images[0::2, :, 3:], out.data.images[1::2, :, 3:])
    np.testing.assert_array_equal(out.data.labels, np.asarray(few.labels)[out.source_index])


def test_the_default_keeps_the_top_half_and_a_mask_keeps_what_it_marks(model, few):
    half = complete(model, few, seed=0)
    assert half.settings["keep_rows"] == 4
    assert torch.equal(half.data.images[:, :, :4], few.images[:, :, :4])
    mask = np.zeros((8, 8), dtype=bool)
    mask[:, :3] = True  # the left three columns
    left = complete(model, few, mask=mask, seed=0)
    assert torch.equal(left.data.images[:, :, :, :3], few.images[:, :, :, :3])
    assert not torch.equal(left.data.images[:, :, :, 3:], few.images[:, :, :, 3:])


def test_same_seed_same_completions(model, few):
    a = complete(model, few, keep_rows=2, seed=3).data.images
    assert torch.equal(a, complete(model, few, keep_rows=2, seed=3).data.images)
    assert not torch.equal(a, complete(model, few, keep_rows=2, seed=4).data.images)


def test_the_table_holds_each_original_beside_its_completions(model, few, tmp_path):
    out = complete(model, few, keep_rows=4, completions=2, seed=0)
    path = tmp_path / "c.parquet"
    out.write(path, command="test")
    table = pq.read_table(path)
    assert table.column_names[:4] == ["index", "id", "image", "label"]
    assert {"original", "source_id", "completion", "kept_share", "synthetic"} <= set(table.column_names)
    row = table.slice(3, 1).to_pylist()[0]
    assert row["index"] == 1 and row["completion"] == 1 and row["source_id"] == few.ids[1]
    assert row["kept_share"] == pytest.approx(0.5)
    original = np.asarray(Image.open(io.BytesIO(row["original"]["bytes"])))
    np.testing.assert_array_equal(original, few.images[1, 0].numpy())
    completion = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
    np.testing.assert_array_equal(completion, out.data.images[3, 0].numpy())
    assert len(set(table.column("id").to_pylist())) == 24
    import json

    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["original"] == {"_type": "Image"} and features["image"] == {"_type": "Image"}
    assert json.loads(table.schema.metadata[b"genaug"])["job"] == "complete"


def test_bad_requests_are_one_line_errors(model, few, digits):
    with pytest.raises(GenaugError, match="keep-rows must be an integer in 0..7"):
        complete(model, few, keep_rows=8)
    with pytest.raises(GenaugError, match="not both"):
        complete(model, few, keep_rows=2, mask=np.ones((8, 8), bool))
    with pytest.raises(GenaugError, match="must be boolean"):
        complete(model, few, mask=np.ones((8, 8)))
    with pytest.raises(GenaugError, match="does not fit"):
        complete(model, few, mask=np.ones((7, 8), bool))
    with pytest.raises(GenaugError, match="completions must be a positive integer"):
        complete(model, few, completions=0)
    with pytest.raises(GenaugError, match=r"completes \(1, 8, 8\).*data is \(1, 4, 4\)"):
        complete(model, ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8)))
    vae = genaug.fit(few, train_config=TrainConfig(epochs=1, progress=False), llr=False)
    with pytest.raises(GenaugError, match="completion needs complete, which model family 'vae' lacks"):
        complete(vae, few)


def test_keep_mask_of_the_top_rows():
    rows = keep_mask((3, 5, 4), keep_rows=2)
    assert rows.shape == (5, 4) and rows[:2].all() and not rows[2:].any()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "genaug", *map(str, args)], capture_output=True, text=True)


def test_cli_completes_a_file_and_refuses_what_does_not_fit(model, few, tmp_path, capsys):
    from genaug.cli.app import main

    ckpt = tmp_path / "m.safetensors"
    save_model(model, ckpt)
    data = tmp_path / "few.npz"
    np.savez(data, x=few.images.numpy(), y=np.asarray(few.labels))
    out = tmp_path / "out.parquet"
    done = run_cli("synthesize", "--model-path", ckpt, "--complete", data, "--keep-rows", 5, "--completions", 3,
                   "-o", out, "-q")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "wrote 36 completions of 12 images" in done.stdout
    table = pq.read_table(out)
    assert table.num_rows == 36 and table.column("completion").to_pylist()[:3] == [0, 1, 2]

    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((8, 6), 255, np.uint8)).save(mask)
    for args, message in [
        (["--keep-rows", 2, "-o", tmp_path / "x.parquet"], "--keep-rows needs --complete DATA"),
        (["--complete", data, "-n", 5, "-o", tmp_path / "x.parquet"], "takes no -n"),
        (["--complete", data, "--keep-mask", mask, "-o", tmp_path / "x.parquet"], "is 8x6 but the model's images are 8x8"),
        (["-o", tmp_path / "x.parquet"], "give -n"),
    ]:
        code = main(["synthesize", "--model-path", str(ckpt), *map(str, args)])  # in process: no start-up
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "x.parquet").exists()
