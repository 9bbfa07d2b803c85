"""`genaug run PIPELINE.yaml` and `Pipeline`: the file format, validation before any work, and caching."""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from rich.console import Console

from genaug.cli.app import main
from genaug.data.readers import load_images
from genaug.errors import GenaugError
from genaug.pipelines import Pipeline

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# A small VAE and one epoch: each training takes a second or two on one core.
TINY_MODEL = {"family": "vae", "options": {"latent_dim": 4, "channels": 8, "hidden": 32}, "epochs": 1, "seed": 0,
              "device": "cpu"}  # fmt: skip


@pytest.fixture
def folder(tmp_path, digits):
    """A folder holding a 200-image .npz and a pipeline with two branches:
    source -> fit -> audit -> clean -> dataset, and source -> augmented (no model)."""
    np.savez(tmp_path / "data.npz", x=digits.images[:200].numpy(), y=digits.labels[:200])
    doc = {
        "source": "data.npz",
        "model": TINY_MODEL,
        "steps": [
            {"fit": {"name": "model", "output": "out/model.safetensors", "llr": False}},
            {"detect_outliers": {"name": "audit", "output": "out/audit.parquet", "score": "complexity",
                                 "contamination": 0.05}},
            {"filter": {"name": "clean", "drop": "is_outlier", "output": "out/clean.parquet"}},
            {"export": {"name": "dataset", "output": "out/dataset.parquet", "columns": ["id", "image", "label"]}},
            {"augment": {"name": "augmented", "input": "source", "copies": 1, "output": "out/augmented.parquet"}},
        ],
    }  # fmt: skip
    write(tmp_path / "pipeline.yaml", doc)
    return tmp_path


def write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run(path: Path, **kwargs):
    """Run the pipeline file; (result, what the console printed)."""
    buffer = io.StringIO()
    result = Pipeline.from_yaml(path).run(console=Console(file=buffer, width=300), **kwargs)
    return result, buffer.getvalue()


def stamps(folder: Path) -> dict:
    """Every output file's bytes and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((folder / "out").rglob("*")) if p.is_file()}


def status(result) -> dict:
    return {s.name: s.status for s in result.steps}


# -- the format ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["clean_dataset.yaml", "rebalance_augment.yaml", None])
def test_a_pipeline_file_round_trips(tmp_path, folder, name):
    path = EXAMPLES / name if name else folder / "pipeline.yaml"
    pipeline = Pipeline.from_yaml(path)
    again = Pipeline.from_dict(pipeline.to_dict(), base_dir=path.parent)
    assert again == pipeline and again.to_dict() == pipeline.to_dict()
    copy = path.parent / f"copy-{path.name}"
    try:
        copy.write_text(pipeline.to_yaml())
        assert Pipeline.from_yaml(copy) == pipeline
    finally:
        copy.unlink()
    # Written as in the file: the steps' kinds, names and outputs, the settings with their types.
    doc = yaml.safe_load(path.read_text())
    steps = pipeline.to_dict()["steps"]
    assert [next(iter(s)) for s in steps] == [next(iter(s)) for s in doc["steps"]]
    for ours, theirs in zip(steps, doc["steps"]):
        (kind, body), = ours.items()
        assert {k: v for k, v in body.items() if k != "name" or "name" in theirs[kind]} == theirs[kind]


def test_a_changed_pipeline_is_not_equal(folder):
    pipeline = Pipeline.from_yaml(folder / "pipeline.yaml")
    doc = pipeline.to_dict()
    doc["steps"][1]["detect_outliers"]["contamination"] = 0.1
    assert Pipeline.from_dict(doc, base_dir=folder) != pipeline


# -- caching -------------------------------------------------------------------
def test_a_second_run_does_no_work_and_says_so(folder):
    first, _ = run(folder / "pipeline.yaml")
    assert first.ran == ["model", "audit", "clean", "dataset", "augmented"] and not first.skipped
    before = stamps(folder)
    assert len(before) == 5
    second, printed = run(folder / "pipeline.yaml")
    assert second.skipped == ["model", "audit", "clean", "dataset", "augmented"] and not second.ran
    assert all("unchanged" in s.reason for s in second.steps)
    assert printed.count("skipped") == 5 and "ran" not in printed
    assert stamps(folder) == before  # not one byte written, not one file touched


def test_outputs_record_what_made_them(folder):
    run(folder / "pipeline.yaml")
    meta = json.loads(pq.read_schema(folder / "out/audit.parquet").metadata[b"genaug"])
    record = meta["pipeline"]
    assert record["step"] == "audit" and record["version"] == genaug_version()
    assert record["settings"]["contamination"] == 0.05 and set(record["inputs"]) == {"data", "model"}
    assert meta["job"] == "detect-outliers" and meta["mode"] == "reference"
    # The filter dropped exactly the flagged rows; the export kept the columns asked for.
    audit = pq.read_table(folder / "out/audit.parquet").to_pydict()
    kept = [i for i, flagged in zip(audit["id"], audit["is_outlier"]) if not flagged]
    assert pq.read_table(folder / "out/clean.parquet").column("id").to_pylist() == kept
    dataset = pq.read_table(folder / "out/dataset.parquet")
    assert dataset.column_names == ["id", "image", "label"] and dataset.num_rows == len(kept) == 190
    labels = [y for y, flagged in zip(audit["label"], audit["is_outlier"]) if not flagged]
    assert load_images(folder / "out/dataset.parquet").labels.tolist() == labels


def genaug_version():
    from genaug._version import __version__

    return __version__


def test_a_changed_setting_reruns_only_that_step_and_those_downstream(folder):
    path = folder / "pipeline.yaml"
    run(path)
    before = stamps(folder)
    doc = yaml.safe_load(path.read_text())
    doc["steps"][1]["detect_outliers"]["contamination"] = 0.1
    write(path, doc)
    result, printed = run(path)
    assert status(result) == {"model": "skipped", "audit": "ran", "clean": "ran", "dataset": "ran",
                              "augmented": "skipped"}  # fmt: skip
    audit = next(s for s in result.steps if s.name == "audit")
    assert audit.reason == "settings changed: contamination 0.05 -> 0.1" and audit.reason in printed
    assert next(s for s in result.steps if s.name == "clean").reason == "audit's output changed"
    after = stamps(folder)
    for name in ("model.safetensors", "augmented.parquet"):
        assert after[folder / "out" / name] == before[folder / "out" / name]
    assert pq.read_table(folder / "out/dataset.parquet").num_rows == 180

    # A training setting reaches the fit step and everything reading its model; augment reads neither.
    doc["model"]["seed"] = 1
    write(path, doc)
    result = run(path)[0]
    assert status(result) == {"model": "ran", "audit": "ran", "clean": "ran", "dataset": "ran", "augmented": "skipped"}
    assert result.steps[0].reason == "settings changed: model.seed 0 -> 1"
    # New source bytes: every step reads them, directly or downstream.
    np.savez(folder / "data.npz", x=load_images(folder / "data.npz").images[:150].numpy())
    result = run(path)[0]
    assert not result.skipped and next(s for s in result.steps if s.name == "model").reason == "the source changed"


def test_force_reruns_every_step(folder, capsys):
    run(folder / "pipeline.yaml")
    assert Pipeline.from_yaml(folder / "pipeline.yaml").run(force=True, console=None).skipped == []
    code = main(["run", str(folder / "pipeline.yaml"), "--force", "--json", "-q"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["ok"] and doc["command"] == "run" and doc["skipped"] == []
    assert [s["status"] for s in doc["steps"]] == ["ran"] * 5 and doc["steps"][0]["reason"] == "forced (--force)"
    code = main(["run", str(folder / "pipeline.yaml"), "--json", "-q"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["ran"] == [] and len(doc["skipped"]) == 5


def test_an_output_without_a_record_is_rewritten(folder):
    run(folder / "pipeline.yaml")
    shutil.copy(folder / "out/audit.parquet", folder / "copy.parquet")
    table = pq.read_table(folder / "out/audit.parquet")
    pq.write_table(table.replace_schema_metadata({}), folder / "out/audit.parquet")  # someone else's file
    result = run(folder / "pipeline.yaml")[0]
    assert status(result)["audit"] == "ran" and status(result)["model"] == "skipped"
    assert "no pipeline record" in next(s.reason for s in result.steps if s.name == "audit")
    # Written again byte for byte (same inputs, same settings): the steps reading it see an unchanged input.
    assert (folder / "out/audit.parquet").read_bytes() == (folder / "copy.parquet").read_bytes()
    assert status(result)["clean"] == "skipped"


def test_filter_keeps_by_condition_and_export_writes_a_folder(folder):
    doc = {
        "source": "data.npz",
        "steps": [
            {"filter": {"name": "small", "keep": ["label < 5", "label != 3"], "output": "out/small.parquet"}},
            {"export": {"format": "folder", "output": "out/images"}},
        ],
    }
    path = write(folder / "folder.yaml", doc)
    result = run(path)[0]
    labels = load_images(folder / "data.npz").labels
    expected = int(((labels < 5) & (labels != 3)).sum())
    exported = load_images(folder / "out/images")
    assert result.ran == ["small", "export"] and len(exported) == expected
    assert sorted(exported.class_names) == ["0", "1", "2", "4"]
    assert (folder / "out/images/genaug.json").is_file()
    assert run(path)[0].skipped == ["small", "export"]
    assert [p.name for p in (folder / "out").iterdir() if p.name.startswith(".")] == []  # no temp folder left


# -- bad pipeline files: one line, before any work ----------------------------------------
FIT = "steps:\n  - fit: {output: m.safetensors}\n"
BAD = [
    ("unknown top-level key", FIT + "soruce: data.npz\n", 3, "soruce"),
    ("unknown step key", "source: data.npz\nsteps:\n  - detect_outliers:\n      output: o.parquet\n      fdrr: 0.1\n",
     5, "steps[0].detect_outliers.fdrr"),
    ("wrong type", "source: data.npz\nsteps:\n  - detect_outliers:\n      output: o.parquet\n      fdr: high\n",
     5, "steps[0].detect_outliers.fdr: must be a finite number"),
    ("job's own check", "source: data.npz\nsteps:\n  - detect_outliers:\n      output: o.parquet\n      fdr: 2\n",
     5, "steps[0].detect_outliers.fdr: --fdr must be between 0 and 1"),
    ("conformal in self-audit", "source: data.npz\nsteps:\n  - detect_outliers:\n      output: o.parquet\n"
     "      conformal: exact\n", 5, "steps[0].detect_outliers.conformal: conformal applies to reference mode"),
    ("refit out of range", "source: data.npz\nsteps:\n  - detect_outliers:\n      output: o.parquet\n"
     "      refit: 0.9\n", 5, "steps[0].detect_outliers.refit: --refit must be at least 0 and below 0.5"),
    ("refit in reference mode",
     "source: data.npz\n" + FIT + "  - detect_outliers:\n      output: o.parquet\n      refit: 0.1\n",
     6, "steps[1].detect_outliers.refit: refit applies to self-audit"),
    ("training check", "source: data.npz\nmodel:\n  family: vae\n  epochs: 0\n" + FIT,
     4, "model.epochs: epochs must be a positive integer"),
    ("model option", "source: data.npz\nmodel:\n  options:\n    latnt_dim: 4\n" + FIT,
     4, "model.options.latnt_dim"),
    ("unknown step kind", "source: data.npz\n" + FIT + "  - detect: {output: o.parquet}\n",
     4, "steps[1].detect: unknown step kind"),
    ("reads a later step", "source: data.npz\nsteps:\n  - filter: {input: audit, drop: is_outlier, output: c.parquet}\n"
     "  - detect_outliers: {name: audit, output: o.parquet}\n", 3, "steps[0].filter.input: 'audit' is not source"),
    ("duplicate output", "source: data.npz\nsteps:\n  - detect_outliers: {output: o.parquet}\n"
     "  - filter: {drop: is_outlier, output: o.parquet}\n", 4, "steps[1].filter.output"),
    ("output is the input", "source: data.npz\nsteps:\n  - detect_outliers: {output: data.npz}\n",
     3, "would overwrite the source"),
    ("not YAML", "source: data.npz\nsteps:\n  - detect_outliers: {output: o.parquet\n", 4, "not valid YAML"),
    ("duplicate key", "source: data.npz\nsteps: []\n" + FIT, 3, "steps: duplicate key"),
    ("YAML 1.1 number", "source: data.npz\nmodel:\n  lr: 1e-3\n" + FIT,
     3, "model.lr: must be a finite number, got the string '1e-3'"),
    ("step without a model", "source: data.npz\nsteps:\n  - synthesize: {n: 4, output: s.parquet}\n",
     3, "steps[0].synthesize: a synthesize step needs a model"),
    ("fit boost below 1", "source: data.npz\nsteps:\n  - rebalance:\n      output: w.parquet\n      fit_boost: 0.5\n",
     5, "steps[0].rebalance.fit_boost: --fit-boost must be a finite number >= 1"),
    ("fit boost without a likelihood", "source: data.npz\nmodel:\n  family: ae\nsteps:\n  - rebalance:\n"
     "      output: w.parquet\n      fit_boost: 3\n", 7, "rebalance fit_boost needs nll, which model family 'ae' lacks"),
]  # fmt: skip


@pytest.mark.parametrize("what, text, line, message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_pipeline_file_is_one_line_naming_key_and_line(tmp_path, digits, capsys, what, text, line, message):
    np.savez(tmp_path / "data.npz", x=digits.images[:50].numpy())
    (tmp_path / "bad.yaml").write_text(text)
    before = sorted(tmp_path.iterdir())
    code = main(["run", str(tmp_path / "bad.yaml")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith(f"error: {tmp_path / 'bad.yaml'} line {line}: ") and message in captured.err
    assert sorted(tmp_path.iterdir()) == before  # nothing written, the input untouched
    with pytest.raises(GenaugError, match=f"line {line}: "):
        Pipeline.from_yaml(tmp_path / "bad.yaml")


def test_a_bad_dict_names_the_key(tmp_path):
    with pytest.raises(GenaugError, match=r"^steps\[0\]\.export\.format: must be one of parquet, folder, got 'zip'$"):
        Pipeline.from_dict({"source": "digits", "steps": [{"export": {"output": "x", "format": "zip"}}]},
                           base_dir=tmp_path)


def test_an_error_during_a_step_names_it_and_leaves_no_partial_output(folder, capsys):
    doc = yaml.safe_load((folder / "pipeline.yaml").read_text())
    doc["steps"][2]["filter"]["drop"] = "is_outlierz"  # a column only the data can refuse
    path = write(folder / "pipeline.yaml", doc)
    line = 1 + next(n for n, text in enumerate(path.read_text().splitlines()) if text.strip() == "- filter:")
    code = main(["run", str(path), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"line {line}: steps[2].filter: step 'clean': drop: no column 'is_outlierz' in audit's data" in err
    assert sorted(p.name for p in (folder / "out").iterdir()) == ["audit.parquet", "model.safetensors"]


def test_the_ray_engine_is_one_line_when_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "genaug.pipelines.engines.ray", None)  # as if not installed
    doc = {"source": "digits", "engine": "ray", "steps": [{"detect_outliers": {"output": "o.parquet"}}]}
    with pytest.raises(GenaugError, match=r"^engine: engine ray is not available: .*pip install 'genaug\[ray\]'"):
        Pipeline.from_dict(doc, base_dir=tmp_path)
    doc = {"source": "digits", "steps": [{"detect_outliers": {"output": "o.parquet", "engine": "ray"}}]}
    with pytest.raises(GenaugError, match=r"^steps\[0\]\.detect_outliers\.engine: engine ray is not available"):
        Pipeline.from_dict(doc, base_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_run_help_imports_no_torch():
    code = "from genaug.cli.app import main; raise SystemExit(main(['run', '--help']))"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "--force" in done.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "genaug.pipelines.runner" not in imported


# -- the examples, as they are -------------------------------------------------------------
# clean_dataset takes 4-10 s here; rebalance_augment 11-30 s (5,691 rows augmented and exported as PNG files).
@pytest.mark.parametrize("name", ["clean_dataset.yaml", pytest.param("rebalance_augment.yaml", marks=pytest.mark.slow)])
def test_the_example_pipelines_run_on_digits(tmp_path, name):
    shutil.copy(EXAMPLES / name, tmp_path / name)
    result, _ = run(tmp_path / name)
    assert not result.skipped and len(result.ran) == len(Pipeline.from_yaml(tmp_path / name).spec.steps)
    if name == "clean_dataset.yaml":
        dataset = load_images(tmp_path / "runs/clean_dataset/dataset.parquet")
        assert len(dataset) == 1797 - round(0.02 * 1797)  # the flagged 2% dropped
    else:
        exported = load_images(tmp_path / "runs/rebalance_augment/training_set")
        assert len(exported) == 3 * (1797 + 100)  # originals + 2 augmented copies of the weighted rows
    assert run(tmp_path / name)[0].ran == []


def test_a_detect_step_with_a_model_streams_parquet_and_writes_what_the_in_memory_job_writes(tmp_path, digits,
                                                                                             monkeypatch):
    import genaug
    from genaug.data.parquet import write_image_table
    from genaug.models.store import load_model
    from genaug.pipelines.engines import local

    write_image_table(tmp_path / "data.parquet", digits.subset(np.arange(300)), genaug_metadata={})
    streamed = []
    stream = local.detect_outliers_parquet
    monkeypatch.setattr(local, "detect_outliers_parquet", lambda *a, **k: streamed.append(a[0]) or stream(*a, **k))
    doc = {"source": "data.parquet", "model": TINY_MODEL, "steps": [
        {"fit": {"name": "model", "output": "out/model.safetensors", "llr": False}},
        {"detect_outliers": {"name": "audit", "output": "out/audit.parquet", "score": "complexity", "fdr": 0.3}},
        {"filter": {"name": "clean", "drop": "is_outlier", "output": "out/clean.parquet"}},
        {"detect_outliers": {"name": "again", "input": "clean", "output": "out/again.parquet", "score": "complexity"}},
    ]}  # fmt: skip
    result, _ = run(write(tmp_path / "pipeline.yaml", doc))
    assert status(result) == {"model": "ran", "audit": "ran", "clean": "ran", "again": "ran"}
    assert streamed == [str(tmp_path / "data.parquet"), str(tmp_path / "out" / "clean.parquet")]
    model = load_model(tmp_path / "out" / "model.safetensors")
    in_memory = genaug.detect_outliers(load_images(tmp_path / "data.parquet"), model=model, score="complexity",
                                       fdr=0.3, console=None)  # fmt: skip
    in_memory.write(tmp_path / "memory.parquet")
    assert pq.read_table(tmp_path / "out" / "audit.parquet").equals(pq.read_table(tmp_path / "memory.parquet"))
    meta = json.loads(pq.read_schema(tmp_path / "out" / "audit.parquet").metadata[b"genaug"])
    assert meta["pipeline"]["step"] == "audit" and meta["pipeline"]["settings"]["engine"] == "local"
    again, _ = run(tmp_path / "pipeline.yaml")
    assert set(status(again).values()) == {"skipped"}
