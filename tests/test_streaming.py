"""Streaming Parquet: readers, the disk-backed image source, and detection that matches the in-memory job."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import genaug
from conftest import with_foreign_images
from genaug.cli.app import main
from genaug.data.imageset import ImageSet
from genaug.data.parquet import read_genaug_metadata, write_image_table
from genaug.data.readers import load_images
from genaug.data.streaming import is_parquet_source, open_parquet
from genaug.errors import GenaugError
from genaug.models.store import load_model, save_model
from genaug.pipelines.engines.local import detect_outliers_parquet
from genaug.pipelines.engines.shards import SHARD_ROWS
from genaug.scoring import score_images
from genaug.train import TrainConfig

# Two shards and a part: the second scoring block has its own seed, the last is short.
N = 2 * SHARD_ROWS + 200


@pytest.fixture(scope="module")
def model_path(digits, tmp_path_factory):
    model = genaug.fit(digits.subset(np.arange(400)), calibration_fraction=0.5,
                       train_config=TrainConfig(epochs=1, progress=False, seed=0))  # fmt: skip
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def data(digits):
    """N images: digits repeated, 10% foreign (so BH flags some with 200 calibration scores), with class names."""
    idx = np.arange(N) % len(digits)
    images, _ = with_foreign_images(digits.subset(idx), share=0.1, seed=1)
    return ImageSet(images.images, images.labels, images.class_names, [f"img-{i:05d}" for i in range(N)], None, "test")


@pytest.fixture(scope="module")
def parquet_file(data, tmp_path_factory):
    """One file written in row groups of 300 rows (shards cross row groups)."""
    path = tmp_path_factory.mktemp("one") / "data.parquet"
    write_image_table(path, data, genaug_metadata={})
    pq.write_table(pq.read_table(path), path, row_group_size=300)
    return path


def _split(table: pa.Table, folder, parts: dict[str, slice]) -> None:
    for name, rows in parts.items():
        os.makedirs(os.path.dirname(folder / name), exist_ok=True)
        pq.write_table(table.slice(rows.start, rows.stop - rows.start), folder / name, row_group_size=250)


def _same_output(a, b) -> None:
    """Two detect-outliers files hold the same rows, schema and metadata (the command aside)."""
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.schema.equals(tb.schema) and ta.equals(tb)
    meta_a, meta_b = (json.loads(t.schema.metadata[b"genaug"]) for t in (ta, tb))
    assert {**meta_a, "command": None} == {**meta_b, "command": None}
    assert ta.schema.metadata[b"huggingface"] == tb.schema.metadata[b"huggingface"]


def _in_memory(source, model_path, output, **options):
    result = genaug.detect_outliers(load_images(source), model=model_path, console=None, **options)
    result.write(output, command="test")
    return result


# -- detection --------------------------------------------------------------------------
@pytest.mark.parametrize("score", ["auto", "knn"])  # knn: the distances to the model's feature bank, per shard
def test_streamed_detection_writes_what_the_in_memory_job_writes(parquet_file, model_path, tmp_path, score):
    memory = _in_memory(parquet_file, model_path, tmp_path / "memory.parquet", fdr=0.3, score=score)
    streamed = detect_outliers_parquet(parquet_file, tmp_path / "streamed.parquet", model=model_path, console=None,
                                       fdr=0.3, score=score, command="test")  # fmt: skip
    _same_output(tmp_path / "memory.parquet", tmp_path / "streamed.parquet")
    assert 0 < streamed.n_flagged == memory.n_flagged < N
    np.testing.assert_array_equal(streamed.score, memory.score)
    np.testing.assert_array_equal(streamed.p_value, memory.p_value)
    assert streamed.top_rows(5) == memory.top_rows(5)
    # Only the output is left in the folder: the spill and the temp file are gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.parquet", "streamed.parquet"]


def test_a_folder_of_parquet_files_streams_like_it_loads(parquet_file, model_path, tmp_path):
    folder = tmp_path / "shards"
    _split(pq.read_table(parquet_file), folder, {"a.parquet": slice(0, 700), "b/c.parquet": slice(700, 1500),
                                                 "b/d.parquet": slice(1500, N)})  # fmt: skip
    (folder / "_SUCCESS").write_text("")  # Spark's marker: skipped
    assert is_parquet_source(folder)
    _in_memory(folder, model_path, tmp_path / "memory.parquet", contamination=0.05)
    detect_outliers_parquet(folder, tmp_path / "streamed.parquet", model=model_path, console=None,
                            contamination=0.05, command="test")  # fmt: skip
    _same_output(tmp_path / "memory.parquet", tmp_path / "streamed.parquet")
    # The rows are the single file's rows, in file path order.
    table = pq.read_table(tmp_path / "streamed.parquet")
    assert table["id"].to_pylist() == pq.read_table(parquet_file)["id"].to_pylist()


def test_a_hive_partitioned_dataset_reads_its_partition_column_as_labels(data, parquet_file, model_path, tmp_path):
    table = pq.read_table(parquet_file).drop_columns(["label"])
    folder = tmp_path / "partitioned"
    order = np.argsort(data.labels, kind="stable")
    for k in np.unique(data.labels):
        rows = order[data.labels[order] == k]
        os.makedirs(folder / f"label={k}")
        pq.write_table(table.take(pa.array(rows)), folder / f"label={k}" / "part-0.parquet", row_group_size=128)
    loaded = load_images(folder)
    np.testing.assert_array_equal(loaded.labels, data.labels[order])
    assert torch.equal(loaded.images, data.images[torch.from_numpy(order)])
    _in_memory(folder, model_path, tmp_path / "memory.parquet")
    detect_outliers_parquet(folder, tmp_path / "streamed.parquet", model=model_path, console=None, command="test")
    _same_output(tmp_path / "memory.parquet", tmp_path / "streamed.parquet")


def test_the_cli_streams_parquet_input_and_answers_in_json(parquet_file, model_path, tmp_path, capsys):
    out = tmp_path / "cli.parquet"
    code = main(["detect-outliers", str(parquet_file), "--model-path", str(model_path), "-o", str(out), "--json", "-q"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["ok"] and doc["engine"] == "local" and doc["n_images"] == N
    memory = _in_memory(parquet_file, model_path, tmp_path / "memory.parquet")
    assert doc["n_flagged"] == memory.n_flagged
    _same_output(tmp_path / "memory.parquet", out)


def test_scores_do_not_depend_on_how_rows_are_split(digits, model_path):
    model = load_model(model_path)
    x = digits.images[: 3 * 256 + 10]
    whole = score_images(model, x, batch_size=256)
    parts = [score_images(model, x[s : s + 512], batch_size=256, first_row=s) for s in (0, 512)]
    np.testing.assert_array_equal(whole.bits_per_dim, np.concatenate([p.bits_per_dim for p in parts]))
    with pytest.raises(ValueError, match="multiples of batch_size"):
        score_images(model, x[:10], batch_size=256, first_row=100)


# -- readers ------------------------------------------------------------------------------
def test_batches_are_the_loaded_rows_at_aligned_starts(data, parquet_file):
    source = open_parquet(parquet_file)
    loaded = load_images(parquet_file)
    batches = list(source.batches(400))
    assert [b.start for b in batches] == list(range(0, N, 400))
    assert torch.equal(torch.cat([b.images for b in batches]), loaded.images)
    assert [i for b in batches for i in b.ids] == loaded.ids == data.ids
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), loaded.labels)
    assert source.class_names == loaded.class_names == data.class_names


def test_globs_and_file_uris_read_the_same_rows(parquet_file, tmp_path):
    folder = tmp_path / "g"
    without_ids = pq.read_table(parquet_file).drop_columns(["id"])
    _split(without_ids, folder, {"x/p1.parquet": slice(0, 1000), "y/p2.parquet": slice(1000, N)})
    as_folder = load_images(folder)
    # Several files: default ids name the file below the root, and the row in it.
    assert as_folder.ids[999:1001] == ["x/p1-000999", "y/p2-000000"]
    for source in (f"{folder}/*/*.parquet", f"{folder}/**/*.parquet", f"file://{folder}", f"file://{folder}/*/p*.parquet"):
        read = load_images(source)
        assert torch.equal(read.images, as_folder.images) and read.ids == as_folder.ids
    with pytest.raises(GenaugError, match="no Parquet files match"):
        open_parquet(f"{folder}/*/*.csv")


def test_the_disk_backed_source_returns_the_in_memory_images(parquet_file):
    loaded = load_images(parquet_file)
    images = open_parquet(parquet_file).images(cache_bytes=2 * 300 * 28 * 28)
    assert len(images) == N and images.shape == tuple(loaded.images.shape)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        idx = torch.randint(0, N, (64,), generator=generator)
        assert torch.equal(images[idx], loaded.images[idx])
    idx = torch.tensor([N - 1, 0, 0, 301, -1])
    assert torch.equal(images[idx], loaded.images[idx])
    np.testing.assert_array_equal(images.labels, loaded.labels)
    with pytest.raises(IndexError):
        images[torch.tensor([N])]


# -- errors: one line, no output -----------------------------------------------------------
def test_a_bad_image_mid_stream_is_one_line_and_leaves_nothing(parquet_file, model_path, tmp_path):
    table = pq.read_table(parquet_file)
    cells = table["image"].to_pylist()
    cells[N - 5] = {"bytes": b"not an image", "path": None}
    broken = table.set_column(table.schema.get_field_index("image"), "image", pa.array(cells, table.schema.field("image").type))
    pq.write_table(broken, tmp_path / "broken.parquet")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(GenaugError, match=f"cannot decode image: .*broken.parquet row {N - 5}") as e:
        detect_outliers_parquet(tmp_path / "broken.parquet", out_dir / "o.parquet", model=model_path, console=None)
    assert "\n" not in str(e.value)
    assert list(out_dir.iterdir()) == []


def test_paths_in_a_streamed_file_stay_inside_its_root(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"x")
    inner = tmp_path / "data"
    inner.mkdir()
    pq.write_table(pa.table({"image": ["../secret.png"]}), inner / "p.parquet")
    with pytest.raises(GenaugError, match="outside the dataset root") as a:
        open_parquet(inner).read(0, 1)
    with pytest.raises(GenaugError, match="outside the dataset root") as b:
        load_images(inner / "p.parquet")
    assert str(a.value).split(" (")[0] == str(b.value).split(" (")[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["digits", "--engine", "ray"], "--engine ray needs --model-path"),
        (["digits", "--engine", "ray", "--model-path", "{model}"], "--engine ray reads Parquet input"),
        (["{data}", "--ray-concurrency", "2", "--model-path", "{model}"], "go with --engine ray"),
        (["{folder}", "--model-path", "{model}"], "no Parquet files match"),
        (["digits", "--conformal", "exact"], "--conformal applies to reference mode"),
        (["{data}", "--model-path", "{model}", "--refit", "0.1"], "--refit applies to self-audit"),
        (["digits", "--refit", "0.7"], "--refit must be at least 0 and below 0.5"),
    ],
)
def test_engine_errors_are_one_line(args, message, model_path, parquet_file, tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    fill = {"{model}": str(model_path), "{data}": str(parquet_file), "{folder}": str(tmp_path / "empty" / "*.parquet")}
    code = main(["detect-outliers", *[fill.get(a, a) for a in args], "-o", str(tmp_path / "o.parquet")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o.parquet").exists()


def test_streamed_detection_takes_the_exact_conformal_p_values(model_path, parquet_file, tmp_path):
    out = tmp_path / "o.parquet"
    assert main(["detect-outliers", str(parquet_file), "--model-path", str(model_path), "--conformal", "exact",
                 "-o", str(out), "--quiet"]) == 0  # fmt: skip
    in_memory = genaug.detect_outliers(load_images(parquet_file), model=model_path, conformal="exact", console=None)
    assert read_genaug_metadata(out)["conformal"] == "exact"
    np.testing.assert_array_equal(pq.read_table(out)["p_value"].to_numpy(), in_memory.p_value)


def test_the_cli_engine_choices_are_the_engines():
    from genaug.cli import app
    from genaug.pipelines.engines import ENGINES

    assert app.ENGINES == ENGINES
