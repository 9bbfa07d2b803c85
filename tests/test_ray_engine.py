"""The Ray engine scores and flags exactly as the local engine (a local Ray on 2 CPUs)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import genaug
from conftest import with_foreign_images
from genaug.cli.app import main
from genaug.data.parquet import write_image_table
from genaug.models.store import save_model
from genaug.pipelines.engines import local
from genaug.pipelines.engines.shards import SHARD_ROWS
from genaug.train import TrainConfig

ray = pytest.importorskip("ray")
engine = pytest.importorskip("genaug.pipelines.engines.ray")

# Starting Ray and its workers (each imports torch) takes half a minute or more on 2 cores.
pytestmark = pytest.mark.slow
N = 2 * SHARD_ROWS + 100


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def files(digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray")
    model = genaug.fit(digits.subset(np.arange(400)), calibration_fraction=0.5,
                       train_config=TrainConfig(epochs=1, progress=False, seed=0))  # fmt: skip
    save_model(model, folder / "m.safetensors")
    data, _ = with_foreign_images(digits.subset(np.arange(N) % len(digits)), share=0.1, seed=2)
    write_image_table(folder / "data" / "d.parquet", data, genaug_metadata={})
    table = pq.read_table(folder / "data" / "d.parquet")
    pq.write_table(table.slice(0, 1500), folder / "data" / "d.parquet", row_group_size=400)
    pq.write_table(table.slice(1500), folder / "data" / "e.parquet", row_group_size=400)
    return folder, data


def test_ray_and_local_engines_write_the_same_file(files):
    folder, _ = files
    model = folder / "m.safetensors"
    options = {"model": model, "fdr": 0.3, "console": None, "command": "same"}
    by_local = local.detect_outliers_parquet(folder / "data", folder / "local.parquet", **options)
    by_ray = engine.detect_outliers_parquet(folder / "data", folder / "ray.parquet", concurrency=2, **options)
    np.testing.assert_array_equal(by_ray.score, by_local.score)
    np.testing.assert_array_equal(by_ray.is_outlier, by_local.is_outlier)
    assert 0 < by_ray.n_flagged < N
    a, b = pq.read_table(folder / "local.parquet"), pq.read_table(folder / "ray.parquet")
    assert a.equals(b) and a.schema.equals(b.schema, check_metadata=True)


def test_ray_scores_data_in_memory_as_detect_outliers_does(files):
    folder, data = files
    model = folder / "m.safetensors"
    on_ray = engine.detect_outliers(data, model=model, fdr=0.3, console=None, family="vae", train_config=None)
    in_process = genaug.detect_outliers(data, model=model, fdr=0.3, console=None)
    np.testing.assert_array_equal(on_ray.score, in_process.score)
    np.testing.assert_array_equal(on_ray.p_value, in_process.p_value)
    np.testing.assert_array_equal(on_ray.is_outlier, in_process.is_outlier)
    assert on_ray.table().equals(in_process.table())


def test_the_cli_runs_the_ray_engine(files, capsys):
    folder, _ = files
    out = folder / "cli.parquet"
    args = ["detect-outliers", str(folder / "data"), "--model-path", str(folder / "m.safetensors"), "-o", str(out),
            "--engine", "ray", "--ray-concurrency", "2", "--fdr", "0.3", "--json", "-q"]  # fmt: skip
    code = main(args)
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["engine"] == "ray" and doc["n_images"] == N
    local.detect_outliers_parquet(folder / "data", folder / "local_cli.parquet", model=folder / "m.safetensors",
                                  fdr=0.3, console=None)  # fmt: skip
    assert pq.read_table(out).equals(pq.read_table(folder / "local_cli.parquet"))


def test_a_pipeline_step_on_ray_writes_what_the_local_step_writes(files):
    import yaml

    from genaug.pipelines import Pipeline

    folder, _ = files
    written = {}
    for name in ("local", "ray"):
        doc = {
            "source": str(folder / "data" / "d.parquet"),
            "model": {"checkpoint": str(folder / "m.safetensors")},
            "engine": name,
            "steps": [{"detect_outliers": {"output": f"pipe_{name}.parquet", "fdr": 0.3}}],
        }
        path = folder / f"pipe_{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        Pipeline.from_yaml(path).run(console=None)
        written[name] = pq.read_table(folder / f"pipe_{name}.parquet")
    assert written["ray"].num_rows == 1500
    assert written["ray"].equals(written["local"])  # the rows; the metadata records the engine's settings
