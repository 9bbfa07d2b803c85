"""Run a pipeline file: each step in order, skipped when nothing it depends on changed.

    result = Pipeline.from_yaml("clean.yaml").run()      # genaug run clean.yaml
    print(result.ran, result.skipped)

Caching. Every output carries a record of what made it, in its `genaug`
metadata under `pipeline` (a Parquet file's schema metadata; a checkpoint's
safetensors metadata; `genaug.json` in an exported folder):

* `inputs`: content hashes (sha256) of what the step read: the source (its
  file bytes, every file of a folder, or the pixels, labels and ids of a
  built-in or remote dataset), an earlier step's output file, the
  checkpoint a step loads, a recipe file;
* `settings`: the step's settings as written, plus the model section when
  the step trains, and the source's reader options when it reads the source;
* `version`: genaug's version;

and `key`, the sha256 of those three. A step whose every output exists and
holds the key computed now is skipped: its inputs, settings and the code
are what they were. A changed setting changes that step's key; its new
output has new bytes, so every step reading it (directly or further down)
sees a new input hash and runs too, while steps upstream and on other
branches stay skipped. `force=True` runs every step.

Steps read each other's outputs from disk, whether those ran now or were
skipped, so a skipped step and a run one hand on the same thing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text

from genaug._version import __version__
from genaug.errors import GenaugError, first_line, shown, shown_names
from genaug.pipelines import spec as pipeline_spec
from genaug.pipelines.spec import FOLDER_RECORD, SOURCE, TRAIN, PipelineSpec
from genaug.progress import AUTO, resolve_console

_CHUNK = 1 << 20


@dataclass
class StepResult:
    """What one step did: `status` is "ran" or "skipped", `reason` says why."""

    name: str
    kind: str
    status: str
    reason: str
    outputs: list[str]
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "status": self.status, "reason": self.reason,
                "outputs": list(self.outputs), "seconds": round(self.seconds, 3),
                "warnings": list(self.warnings)}  # fmt: skip


@dataclass
class PipelineResult:
    """Every step's `StepResult`, in order, and the total time."""

    steps: list[StepResult]
    seconds: float
    file: str | None = None

    @property
    def ran(self) -> list[str]:
        """Names of the steps that ran."""
        return [s.name for s in self.steps if s.status == "ran"]

    @property
    def skipped(self) -> list[str]:
        """Names of the steps skipped because nothing they depend on changed."""
        return [s.name for s in self.steps if s.status == "skipped"]

    def to_dict(self) -> dict:
        return {"pipeline": self.file, "steps": [s.to_dict() for s in self.steps], "ran": self.ran,
                "skipped": self.skipped, "seconds": round(self.seconds, 3)}  # fmt: skip

    def __repr__(self) -> str:
        return f"PipelineResult({len(self.steps)} steps: {len(self.ran)} ran, {len(self.skipped)} skipped)"


class Pipeline:
    """A validated pipeline; `run()` runs it. Build with `from_yaml` or `from_dict`."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> Pipeline:
        """Read and validate a pipeline file (every key, type, reference and setting) before any work.

        Relative paths inside it are relative to the file's folder.
        """
        doc, lines = pipeline_spec.load_yaml(path)
        spec = pipeline_spec.parse(doc, lines=lines, file=str(path), base_dir=Path(path).absolute().parent)
        pipeline_spec.check_settings(spec)
        return cls(spec)

    @classmethod
    def from_dict(cls, doc: dict, *, base_dir: str | os.PathLike | None = None) -> Pipeline:
        """A pipeline from plain data (the YAML's shape); relative paths are relative to `base_dir` (default: cwd)."""
        spec = pipeline_spec.parse(copy.deepcopy(doc), base_dir=base_dir)
        pipeline_spec.check_settings(spec)
        return cls(spec)

    def to_dict(self) -> dict:
        """The pipeline as plain data; `from_dict` reads it back to an equal pipeline."""
        return self.spec.to_dict()

    def to_yaml(self) -> str:
        """The pipeline as YAML text; `from_yaml` reads it back to an equal pipeline."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def __eq__(self, other) -> bool:
        return isinstance(other, Pipeline) and self.spec == other.spec

    def __repr__(self) -> str:
        steps = ", ".join(f"{s.name} ({s.kind})" for s in self.spec.steps)
        return f"Pipeline({self.spec.file or 'dict'}: {steps})"

    def run(self, *, force: bool = False, console=AUTO) -> PipelineResult:
        """Run the steps in order; a step whose outputs record the same inputs, settings and genaug
        version is skipped (`force=True` runs them all). `console`: a rich Console for the step lines
        and the jobs' progress, None for silence, "auto" for stderr in a terminal."""
        return _Run(self.spec, force, resolve_console(console)).run()


def _detect(engine: str, data, **options):
    """`genaug.detect_outliers` on the `engine` named: local here, ray by the Ray engine
    (imported only when asked for; one line when it is not installed)."""
    if engine == "ray":
        return pipeline_spec.ray_engine().detect_outliers(data, **options)
    from genaug.detect import detect_outliers

    return detect_outliers(data, **options)


class _Run:
    """One run of a pipeline: the data read so far, file hashes, and each step's record."""

    def __init__(self, spec: PipelineSpec, force: bool, console) -> None:
        self.spec, self.force, self.console = spec, force, console
        self.hashes: dict[str, str] = {}
        self.datasets: dict[str, object] = {}
        self.source_hash: str | None = None
        self.command = f"genaug run {spec.file}" if spec.file else "genaug pipeline"

    def run(self) -> PipelineResult:
        started = time.perf_counter()
        results = []
        for i, step in enumerate(self.spec.steps):
            t0 = time.perf_counter()
            try:
                record = self.record(i)
                reason = "forced (--force)" if self.force else self.stale(i, record)
                if reason is None:
                    results.append(self.report(StepResult(step.name, step.kind, "skipped",
                                                          "unchanged: same inputs, settings and genaug version",
                                                          self.output_names(i), time.perf_counter() - t0)))
                    continue
                self.say(Text.assemble((f"step {step.name} ({step.kind}): running", "bold"), f" ({reason})"))
                warnings = STEP_RUNNERS[step.kind](self, i, record) or []
            except GenaugError as e:
                raise GenaugError(f"{self.spec.where(self.spec.step_path(i))}: step '{step.name}': {e}") from None
            for _, path in self.spec.outputs(i):
                self.hashes.pop(str(path), None)
            self.datasets.pop(step.name, None)
            results.append(self.report(StepResult(step.name, step.kind, "ran", reason, self.output_names(i),
                                                  time.perf_counter() - t0, warnings)))
        return PipelineResult(results, time.perf_counter() - started, self.spec.file)

    # -- what a step depends on ---------------------------------------------------
    def record(self, i: int) -> dict:
        """The step's record: its inputs' hashes, its settings, genaug's version, and their key."""
        spec, step = self.spec, self.spec.steps[i]
        inputs: dict = {}
        settings = dict(step.settings)
        ref = spec.inputs[i]
        if ref == SOURCE:
            inputs["data"] = self.source_fingerprint()
            settings["source"] = spec.source.options  # reader options: image_size, mode, columns ...
        elif ref is not None:
            inputs["data"] = self.file_hash(self.output_of(ref))
        model_ref = spec.models[i]
        if step.kind == "fit" or model_ref == TRAIN:
            settings["model"] = spec.model.to_dict()
        elif model_ref is not None:
            inputs["model"] = self.file_hash(self.model_path(model_ref))
        if step.kind == "detect_outliers":
            settings["engine"] = step.settings.get("engine", spec.engine)
        if step.kind == "augment":
            recipe = pipeline_spec.recipe_location(spec, step.settings.get("recipe", "light"))
            if isinstance(recipe, Path):
                inputs["recipe"] = self.file_hash(recipe)
        body = {"kind": step.kind, "inputs": inputs, "settings": settings, "version": __version__}
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return {"key": key, "step": step.name, **body}

    def stale(self, i: int, record: dict) -> str | None:
        """Why step i must run (its first output that is missing or holds another key), or None."""
        for _, path in self.spec.outputs(i):
            if not path.exists():
                return f"no output yet at {path.name}"
            old = _read_record(path)
            if not isinstance(old, dict) or "key" not in old:
                return f"{path.name} holds no pipeline record"
            if old["key"] != record["key"]:
                return _what_changed(old, record, self.input_names(i))
        return None

    def input_names(self, i: int) -> dict[str, str]:
        """What each entry of step i's `inputs` is, in words."""
        data, model = self.spec.inputs[i], self.spec.models[i]
        return {
            "data": "the source" if data == SOURCE else f"{data}'s output",
            "model": "model.checkpoint" if model == "checkpoint" else f"{model}'s checkpoint",
            "recipe": "the recipe file",
        }

    def source_fingerprint(self) -> str:
        """sha256 of the source's content: file bytes (every file of a folder), or, for a built-in
        or remote dataset, its pixels, labels and ids as read."""
        if self.source_hash is None:
            where = self.spec.source_location()
            if isinstance(where, Path) and where.is_file():
                self.source_hash = self.file_hash(where)
            elif isinstance(where, Path) and where.is_dir():
                self.source_hash = _folder_hash(where)
            else:
                data = self.imageset(SOURCE)
                h = hashlib.sha256(data.fingerprint().encode())
                h.update(json.dumps([data.ids, data.class_names]).encode())
                self.source_hash = h.hexdigest()
        return self.source_hash

    def file_hash(self, path: Path) -> str:
        key = str(path)
        if key not in self.hashes:
            self.hashes[key] = _file_hash(path)
        return self.hashes[key]

    def output_of(self, name: str) -> Path:
        return self.spec.resolve(self.spec.steps[self.spec.step_index(name)].output)

    def model_path(self, ref: str) -> Path:
        return self.spec.resolve(self.spec.model.checkpoint) if ref == "checkpoint" else self.output_of(ref)

    def output_names(self, i: int) -> list[str]:
        return [str(path) for _, path in self.spec.outputs(i)]

    # -- what steps read ----------------------------------------------------------
    def imageset(self, ref: str):
        """The dataset `ref` names: the source (read with its reader options) or an earlier step's output."""
        if ref not in self.datasets:
            from genaug.data.readers import load_images

            if ref == SOURCE:
                self.datasets[ref] = load_images(self.spec.source_location(), **self.source_options())
            else:
                limit = self.spec.source.options.get("max_pixels")
                self.datasets[ref] = load_images(self.output_of(ref), max_pixels=limit)
        return self.datasets[ref]

    def source_options(self) -> dict:
        """The source's reader options as `load_images` takes them."""
        options = dict(self.spec.source.options)
        if "image_size" in options:
            options["image_size"] = pipeline_spec.parse_size(options["image_size"])
        return options

    def training_set(self, ref: str):
        """What a fit step trains on: the source, from disk when it is Parquet over the streaming
        threshold (`genaug.data.disk_images.training_data`), or any dataset as `imageset` reads it."""
        if ref != SOURCE or ref in self.datasets:
            return self.imageset(ref)
        from genaug.data.disk_images import training_data

        return training_data(self.spec.source_location(), **self.source_options())

    def parquet_input(self, ref: str) -> tuple[str, dict] | None:
        """(location, reading options) of the dataset `ref` names when it is Parquet that a streaming
        engine reads (the source, or an earlier step's output), else None."""
        from genaug.data.streaming import is_parquet_source

        if ref == SOURCE:
            location = self.spec.source_location()
            if not isinstance(location, (str, os.PathLike)) or not is_parquet_source(location):
                return None
            return str(location), self.source_options()
        limit = self.spec.source.options.get("max_pixels")
        return str(self.output_of(ref)), {} if limit is None else {"max_pixels": limit}

    def table(self, ref: str):
        """(pyarrow table, class names) of the dataset `ref` names, every column kept."""
        if ref == SOURCE:
            from genaug.data.parquet import image_table

            data = self.imageset(SOURCE)
            return image_table(data), data.class_names
        import pyarrow as pa
        import pyarrow.parquet as pq

        from genaug.data.readers import _hf_class_names

        path = self.output_of(ref)
        try:
            table = pq.read_table(path)
        except (OSError, ValueError, pa.ArrowException) as e:
            raise GenaugError(f"cannot read {path}: {first_line(e)}") from None
        return table, _hf_class_names(table.schema.metadata, "label", path)

    def model(self, i: int):
        """The fitted model step i reads, loaded; None when it trains its own or needs none."""
        ref = self.spec.models[i]
        if ref is None or ref == TRAIN:
            return None
        from genaug.models.store import load_model
        from genaug.train import resolve_device

        return load_model(self.model_path(ref), device=resolve_device(self.spec.model.training.get("device", "auto")))

    def train_config(self):
        from genaug.train import TrainConfig

        fields = {name: self.spec.model.training[key] for key, (name, _) in pipeline_spec.TRAINING_KEYS.items()
                  if key in self.spec.model.training}  # fmt: skip
        return TrainConfig(**fields)

    def metadata(self, job: str, record: dict, **fields) -> dict:
        return {"version": __version__, "job": job, "command": self.command, **fields, "pipeline": record}

    # -- what the console shows ---------------------------------------------------
    def say(self, text: Text) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False)

    def report(self, result: StepResult) -> StepResult:
        outputs = ", ".join(result.outputs)
        if result.status == "skipped":
            self.say(Text.assemble(f"step {result.name} ({result.kind}): ", ("skipped", "green"),
                                   f", {result.reason} -> {outputs}"))  # fmt: skip
        else:
            for warning in result.warnings:
                self.say(Text.assemble(("warning:", "yellow"), f" {result.name}: {warning}"))
            self.say(Text.assemble(f"step {result.name} ({result.kind}): ", ("ran", "bold"),
                                   f" in {result.seconds:.1f} s -> {outputs}"))  # fmt: skip
        return result


# -- the steps: each calls its job and writes with the job's own writer ---------------------
def _fit(run: _Run, i: int, record: dict) -> list[str]:
    from genaug.fit import fit
    from genaug.models.store import save_model

    spec, step = run.spec, run.spec.steps[i]
    model = fit(run.training_set(spec.inputs[i]), family=spec.model.family, model_options=dict(spec.model.options),
                train_config=run.train_config(), console=run.console, **step.settings)  # fmt: skip
    model.metadata["command"] = run.command
    model.metadata["pipeline"] = record
    save_model(model, spec.resolve(step.output))
    return []


def _detect_outliers(run: _Run, i: int, record: dict) -> list[str]:
    spec, step = run.spec, run.spec.steps[i]
    options = {k: v for k, v in step.settings.items() if k != "engine"}
    engine, model = step.settings.get("engine", spec.engine), run.model(i)
    parquet = run.parquet_input(spec.inputs[i]) if model is not None and "folds" not in options else None
    if parquet is not None:
        # Reference mode on Parquet streams, as `genaug detect-outliers` does: memory bounded, same output.
        if engine == "ray":
            stream = pipeline_spec.ray_engine().detect_outliers_parquet
        else:
            from genaug.pipelines.engines.local import detect_outliers_parquet as stream
        location, read_options = parquet
        result = stream(location, spec.resolve(step.output), model=model, console=run.console, command=run.command,
                        metadata={"pipeline": record}, **read_options, **options)  # fmt: skip
        return list(result.warnings)
    result = _detect(
        engine, run.imageset(spec.inputs[i]), model=model,
        family=spec.model.family or "vae", model_options=dict(spec.model.options), train_config=run.train_config(),
        console=run.console, **options,
    )  # fmt: skip
    result.settings["pipeline"] = record
    result.write(spec.resolve(step.output), command=run.command)
    return list(result.warnings)


def _rebalance(run: _Run, i: int, record: dict) -> list[str]:
    from genaug.rebalance import rebalance

    spec, step = run.spec, run.spec.steps[i]
    options = {k: v for k, v in step.settings.items() if k != "resampled"}
    result = rebalance(
        run.imageset(spec.inputs[i]), model=run.model(i), family=spec.model.family or "vae",
        model_options=dict(spec.model.options), train_config=run.train_config(), console=run.console, **options,
    )  # fmt: skip
    result.settings["pipeline"] = record
    resampled = step.settings.get("resampled")
    result.write(spec.resolve(step.output), command=run.command,
                 resampled_path=None if resampled is None else spec.resolve(resampled))  # fmt: skip
    return list(result.warnings)


def _synthesize(run: _Run, i: int, record: dict) -> list[str]:
    from genaug.data.parquet import write_image_table
    from genaug.synthesize import synthesize

    spec, step = run.spec, run.spec.steps[i]
    model = run.model(i)
    options = dict(step.settings)
    if "label" in options:
        options["label"] = _class_index(options["label"], model.metadata.get("class_names"))
    result = synthesize(model, console=run.console, **options)
    meta = run.metadata("synthesize", record, model_path=str(run.model_path(spec.models[i])),
                        model_hash=result.model_hash, n_drawn=result.n_drawn, **result.settings)  # fmt: skip
    write_image_table(spec.resolve(step.output), result.data, result.columns(), index=[None] * len(result.data),
                      genaug_metadata=meta)  # fmt: skip
    return []


def _augment(run: _Run, i: int, record: dict) -> list[str]:
    from genaug.data.parquet import write_table
    from genaug.synthesize import augmented_table

    spec, step = run.spec, run.spec.steps[i]
    data = run.imageset(spec.inputs[i])
    options = dict(step.settings)
    recipe = pipeline_spec.recipe_location(spec, options.pop("recipe", "light"))
    table, settings = augmented_table(data, recipe, model=run.model(i), console=run.console, **options)
    write_table(table, spec.resolve(step.output), genaug_metadata=run.metadata("augment", record, **settings),
                class_names=data.class_names)  # fmt: skip
    return []


def _filter(run: _Run, i: int, record: dict) -> list[str]:
    import pyarrow as pa
    import pyarrow.compute as pc

    from genaug.data.parquet import write_table

    spec, step = run.spec, run.spec.steps[i]
    table, names = run.table(spec.inputs[i])
    keep = pa.array([True] * table.num_rows, type=pa.bool_())
    drop = step.settings.get("drop")
    if drop is not None:
        column = _column(run, i, table, "drop", drop)
        if not pa.types.is_boolean(column.type):
            raise GenaugError(
                f"drop: column '{shown(drop, 60)}' holds {column.type}, not true/false; use keep: for a condition"
            )
        keep = pc.and_(keep, pc.invert(pc.fill_null(column, False)))
    conditions = step.settings.get("keep", [])
    for text in conditions if isinstance(conditions, list) else [conditions]:
        name, op, value = pipeline_spec.parse_condition(text)
        column = _column(run, i, table, "keep", name)
        try:
            hit = _compare(op, column, value)
        except (pa.ArrowException, TypeError, ValueError) as e:
            raise GenaugError(f"keep: cannot compare column '{shown(name, 60)}' ({column.type}) with "
                              f"{shown(repr(value), 40)}: {first_line(e)}") from None  # fmt: skip
        keep = pc.and_(keep, pc.fill_null(hit, False))
    kept = table.filter(keep)
    meta = run.metadata("filter", record, input=spec.inputs[i], drop=drop, keep=step.settings.get("keep"),
                        n_input=table.num_rows, n_kept=kept.num_rows)  # fmt: skip
    write_table(kept, spec.resolve(step.output), genaug_metadata=meta, class_names=names)
    if kept.num_rows == 0:
        return [f"kept none of {table.num_rows} rows; steps reading it will find no images"]
    return []


def _compare(op: str, column, value):
    """The rows of `column` for which `column OP value` holds (null where the cell is null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if value is None:  # `== null` / `!= null`: whether the cell is missing
        if op not in ("==", "!="):
            raise GenaugError(f"keep: only == and != compare with null, got {op}")
        return pc.is_null(column) if op == "==" else pc.is_valid(column)
    functions = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater,
                 ">=": pc.greater_equal}  # fmt: skip
    return functions[op](column, pa.scalar(value).cast(column.type))


def _column(run: _Run, i: int, table, key: str, name: str):
    if name not in table.column_names:
        ref = run.spec.inputs[i]
        raise GenaugError(
            f"{key}: no column '{shown(name, 60)}' in {ref}'s data; columns: {shown_names(table.column_names)}"
        )
    return table.column(name)


def _export(run: _Run, i: int, record: dict) -> list[str]:
    spec, step = run.spec, run.spec.steps[i]
    table, names = run.table(spec.inputs[i])
    columns = step.settings.get("columns")
    if columns is not None:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise GenaugError(f"columns: no column {', '.join(shown(c, 40) for c in missing)} in {spec.inputs[i]}'s "
                              f"data; columns: {shown_names(table.column_names)}")  # fmt: skip
        table = table.select(columns)
    meta = run.metadata("export", record, input=spec.inputs[i], columns=table.column_names, n_rows=table.num_rows)
    if step.settings.get("format", "parquet") == "folder":
        _write_folder(table, spec.resolve(step.output), names, meta)
    else:
        from genaug.data.parquet import write_table

        write_table(table, spec.resolve(step.output), genaug_metadata=meta, class_names=names)
    return []


STEP_RUNNERS = {"fit": _fit, "detect_outliers": _detect_outliers, "rebalance": _rebalance,
                "synthesize": _synthesize, "augment": _augment, "filter": _filter, "export": _export}  # fmt: skip


# -- files ---------------------------------------------------------------------------
def _write_folder(table, out: Path, class_names: list[str] | None, meta: dict) -> None:
    """The images as PNG files in class sub-folders (ImageFolder's layout), plus FOLDER_RECORD.

    Written to a hidden temp folder beside `out`, then renamed into place:
    the folder appears whole or not at all, and a previous export is
    replaced only once the new one is complete.
    """
    from genaug.atomic import commit, temp_path

    cells = table.column("image").to_pylist()
    labels = table.column("label").to_pylist() if "label" in table.column_names else [None] * len(cells)
    n = len(cells)
    ids = table.column("id").to_pylist() if "id" in table.column_names else [f"image-{k:06d}" for k in range(n)]
    tmp = temp_path(out)
    try:
        tmp.mkdir(parents=True)
        used: set[str] = set()
        for k, (cell, label, image_id) in enumerate(zip(cells, labels, ids)):
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            if not isinstance(data, (bytes, bytearray)):
                raise GenaugError(f"row {k} has no image bytes to export")
            folder = "" if label is None else _safe_name(
                class_names[label] if class_names and 0 <= label < len(class_names) else str(label))
            name = _safe_name(str(image_id))
            name = name if name.lower().endswith(".png") else f"{name}.png"
            rel = f"{folder}/{name}" if folder else name
            if rel in used:  # ids need not be unique (or may sanitise alike): the row number tells them apart
                rel = rel[: -len(".png")] + f"-{k}.png"
            used.add(rel)
            (tmp / folder).mkdir(exist_ok=True)
            (tmp / rel).write_bytes(bytes(data))
        (tmp / FOLDER_RECORD).write_text(json.dumps(meta, indent=1, default=str))
        old = None
        if out.exists():
            old = temp_path(out, "old")
            os.replace(out, old)
        try:
            commit(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise GenaugError(f"cannot write folder {out}: {e.strerror or first_line(e)}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _safe_name(text: str) -> str:
    """A file or folder name from an id or class name: no separators, no leading dot, at most 150 characters."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:150].lstrip(".")
    return name or "_"


def _read_record(path: Path) -> dict | None:
    """The pipeline record an output holds, or None when it holds none or cannot be read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genaug import parquet_meta

    try:
        if path.is_dir():
            record = json.loads((path / FOLDER_RECORD).read_text("utf-8")).get("pipeline")
        elif path.suffix == ".safetensors":
            from genaug.checkpoint import read_metadata

            record = read_metadata(path).get("pipeline")
        else:
            record = parquet_meta.genaug_metadata(pq.read_schema(path).metadata, str(path)).get("pipeline")
    except (GenaugError, OSError, ValueError, AttributeError, pa.ArrowException):
        return None  # unreadable or not ours: the step runs and replaces it
    return record if isinstance(record, dict) else None


def _what_changed(old: dict, new: dict, names: dict[str, str]) -> str:
    """The first difference between an output's record and the step's now, in words."""
    if old.get("version") != new["version"]:
        return f"genaug version changed ({old.get('version')} -> {new['version']})"
    old_settings, settings = _flat(old.get("settings") or {}), _flat(new["settings"])
    changed = [k for k in sorted(set(old_settings) | set(settings)) if old_settings.get(k) != settings.get(k)]
    if changed:
        parts = [f"{k} {_short(old_settings.get(k))} -> {_short(settings.get(k))}" for k in changed[:3]]
        return "settings changed: " + ", ".join(parts) + (" ..." if len(changed) > 3 else "")
    old_inputs, inputs = old.get("inputs") or {}, new["inputs"]
    changed = [k for k in sorted(set(old_inputs) | set(inputs)) if old_inputs.get(k) != inputs.get(k)]
    if changed:
        return " and ".join(names.get(k, k) for k in changed) + " changed"
    return "the output's record differs"


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings (the model section, its options) as dotted keys, so a change names its key."""
    out = {}
    for key, value in settings.items() if isinstance(settings, dict) else ():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _short(value) -> str:
    return "unset" if value is None else shown(json.dumps(value, sort_keys=True), 60)


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise GenaugError(f"cannot read {path}: {e.strerror or first_line(e)}") from None
    return h.hexdigest()


def _folder_hash(root: Path) -> str:
    """sha256 over every regular file under `root`: its path relative to `root` and its bytes."""
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_file():
                h.update(json.dumps(str(path.relative_to(root))).encode())
                h.update(_file_hash(path).encode())
    return h.hexdigest()


def _class_index(label, class_names: list[str] | None) -> int:
    """A class given by name (preferred) or index."""
    if isinstance(label, str):
        if class_names and label in class_names:
            return class_names.index(label)
        try:
            return int(label)
        except ValueError:
            names = ", ".join(class_names or [])
            raise GenaugError(f"label '{shown(label, 60)}' is not a class name ({names}) or index") from None
    return label
