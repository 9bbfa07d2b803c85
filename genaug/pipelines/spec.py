"""The pipeline file: its format, and its validation before any work.

A pipeline is a YAML file (or the same as a dict)::

    source: digits                  # anything genaug.load_images reads: folder, .parquet, .npz, digits, a URI;
                                    # or {path: ..., image_size: 28, mode: gray, image_column: img, ...}
    model:                          # how models are trained ...
      family: vae
      options: {latent_dim: 16}     # the family's constructor options
      epochs: 2                     # training: epochs, time_limit, batch_size, lr, seed, device, trim
    #                               # ... or `model: {checkpoint: model.safetensors}`: a fitted model
    engine: local                   # default engine of detect_outliers steps: local or ray
    steps:                          # run in order; each is `- KIND: {settings}`
      - fit: {name: model, output: out/model.safetensors}
      - detect_outliers: {name: audit, output: out/outliers.parquet, contamination: 0.01}
      - filter: {name: clean, input: audit, drop: is_outlier, output: out/clean.parquet}
      - export: {output: out/dataset.parquet, columns: [id, image, label]}

Every step names its `output`. A step that reads a dataset reads `input`:
`source` or the name of an earlier step that wrote one (default: the
dataset the step before it wrote, else the source). A step that uses a
model reads `model`: the name of an earlier `fit` step (default: the last
one), else the pipeline's `model.checkpoint`; `detect_outliers` (self-audit)
and `rebalance` may train their own (`model: train`, the default when there
is neither). Relative paths are relative to the pipeline file's folder.

Validation is two passes, both before any work: `parse` checks the shape
of the document (known keys, types, step kinds, names and references,
output paths), `check_settings` then hands every setting to the check the
job itself runs (TrainConfig, the family registry, `check_fraction`, the
recipe loader, ...): there is one copy of each rule, the job's. Either
pass fails with one line naming the file, the line and the key.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from genaug.errors import GenaugError, shown

# -- the vocabulary --------------------------------------------------------------
STEP_KINDS = ("fit", "detect_outliers", "rebalance", "synthesize", "augment", "filter", "export")
# Steps whose output is a dataset that later steps may read.
DATASET_STEPS = ("detect_outliers", "rebalance", "synthesize", "augment", "filter")
# Steps that may train a model of their own when none is given.
TRAINING_STEPS = ("detect_outliers", "rebalance")
ENGINES = ("local", "ray")
CONFORMAL = ("extended", "exact")  # genaug.detect.CONFORMAL (a test keeps them equal; detect imports torch)
EXPORT_FORMATS = ("parquet", "folder")
SOURCE = "source"  # the `input` that names the pipeline's source
TRAIN = "train"  # the `model` that asks a step to train its own
MAX_SEED = 2**63 - 1  # what torch and numpy take (the CLI's --seed bound)
# A YAML file is untrusted input: aliases can multiply nodes, or loop.
MAX_NODES = 100_000
MAX_DEPTH = 40
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_SIZE = re.compile(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?")
_CONDITION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(==|!=|<=|>=|<|>)\s*(.+?)\s*")


@dataclass(frozen=True)
class Kind:
    """The type a key's value must have. Bounds only where the job checks a value inline
    (not in a function the validation can call); everything else is the jobs' checks."""

    name: str  # int, number, bool, str, choice, strings, condition, options, size, label
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False  # number > 0
    choices: tuple[str, ...] = ()

    def problem(self, v) -> str | None:
        """Why `v` is not of this kind, or None."""
        is_int = isinstance(v, int) and not isinstance(v, bool)
        is_number = (is_int or isinstance(v, float)) and not isinstance(v, bool)
        if self.name == "int":
            if not is_int:
                return f"must be an integer, got {_show(v)}"
        elif self.name == "number":
            if isinstance(v, str) and _float(v) is not None:  # PyYAML reads 1e-3 (no dot) as a string
                return f"must be a finite number, got the string {_show(v)} (YAML reads 1e-3 as text: write 1.0e-3)"
            if not (is_number and math.isfinite(v)):
                return f"must be a finite number, got {_show(v)}"
            if self.positive and not v > 0:
                return f"must be greater than 0, got {_show(v)}"
        elif self.name == "bool":
            if not isinstance(v, bool):
                return f"must be true or false, got {_show(v)}"
        elif self.name == "str":
            if not (isinstance(v, str) and v.strip()):
                return f"must be a non-empty string, got {_show(v)}"
        elif self.name == "choice":
            if v not in self.choices:
                return f"must be one of {', '.join(self.choices)}, got {_show(v)}"
        elif self.name == "strings":
            if not (isinstance(v, list) and v and all(isinstance(s, str) and s for s in v)):
                return f"must be a non-empty list of names, got {_show(v)}"
        elif self.name == "condition":
            items = v if isinstance(v, list) and v else [v]
            bad = next((c for c in items if not (isinstance(c, str) and _CONDITION.fullmatch(c))), None)
            if bad is not None:
                ops = "==, !=, <, <=, >, >="
                return f"must be a condition 'COLUMN OP VALUE' ({ops}) or a list of them, got {_show(bad)}"
        elif self.name == "options":
            if not isinstance(v, dict):
                return f"must be a mapping of option names to values, got {_show(v)}"
            scalar = (str, int, float, bool, type(None))
            flat = {k: x if isinstance(x, list) else [x] for k, x in v.items()}
            bad = next((k for k, x in flat.items() if not all(isinstance(y, scalar) for y in x)), None)
            if bad is not None:
                what = "a number, string, boolean or a list of them"
                return f"option '{shown(bad, 40)}' must be {what}, got {_show(v[bad])}"
        elif self.name == "size":
            if not (parse_size(v) is not None):
                return f"must be N, 'HxW' or [H, W] with positive sizes, got {_show(v)}"
        elif self.name == "label":
            if not (is_int or isinstance(v, str)):
                return f"must be a class name or index, got {_show(v)}"
        if self.minimum is not None and is_number and v < self.minimum:
            return f"must be at least {self.minimum:g}, got {v}"
        if self.maximum is not None and is_number and v > self.maximum:
            return f"must be at most {self.maximum:g}, got {v}"
        return None


INT, NUMBER, BOOL, STR = Kind("int"), Kind("number"), Kind("bool"), Kind("str")
SEED = Kind("int", minimum=0, maximum=MAX_SEED)
SOURCE_KEYS = {
    "path": STR,
    "image_size": Kind("size"),
    "mode": Kind("choice", choices=("gray", "rgb")),
    "image_column": STR,
    "label_column": STR,
    "id_column": STR,
    "allow_outside_root": BOOL,
    "max_pixels": Kind("int", minimum=1),
}
# model section keys that are training settings, and the TrainConfig field each sets.
TRAINING_KEYS = {
    "epochs": ("epochs", INT),
    "time_limit": ("time_limit", NUMBER),
    "batch_size": ("batch_size", INT),
    "lr": ("lr", NUMBER),
    "seed": ("seed", SEED),
    "device": ("device", STR),
    "trim": ("trim_fraction", NUMBER),
}
MODEL_KEYS = {"family": STR, "checkpoint": STR, "options": Kind("options"),
              **{key: kind for key, (_, kind) in TRAINING_KEYS.items()}}  # fmt: skip
_COMMON = {"name": STR, "output": STR}
_INPUT = {"input": STR}
_MODEL = {"model": STR}
STEP_KEYS: dict[str, dict[str, Kind]] = {
    "fit": {**_COMMON, **_INPUT, "conditional": BOOL, "calibration_fraction": NUMBER, "iwae_k": INT, "llr": BOOL,
            "mutation_rate": NUMBER},
    "detect_outliers": {**_COMMON, **_INPUT, **_MODEL, "score": STR, "fdr": NUMBER, "contamination": NUMBER,
                        "folds": Kind("int", minimum=2), "iwae_k": INT, "mutation_rate": NUMBER,
                        "conformal": Kind("choice", choices=CONFORMAL), "refit": NUMBER,
                        "engine": Kind("choice", choices=ENGINES)},
    "rebalance": {**_COMMON, **_INPUT, **_MODEL, "resampled": STR, "density": STR, "components": Kind("int", minimum=1),
                  "bins": Kind("int", minimum=2), "alpha": NUMBER, "aggregate": STR, "fit_boost": NUMBER,
                  "fit_share": NUMBER, "per_class": BOOL,
                  "size": Kind("int", minimum=1), "synthesize": Kind("int", minimum=0), "seed": SEED},
    "synthesize": {**_COMMON, **_MODEL, "n": Kind("int", minimum=1), "label": Kind("label"),
                   "temperature": Kind("number", positive=True), "filter_fdr": NUMBER, "seed": SEED},
    "augment": {**_COMMON, **_INPUT, **_MODEL, "recipe": STR, "copies": Kind("int", minimum=1), "keep_originals": BOOL,
                "synthetic_ratio": Kind("number", minimum=0), "seed": SEED},
    "filter": {**_COMMON, **_INPUT, "drop": STR, "keep": Kind("condition")},
    "export": {**_COMMON, **_INPUT, "format": Kind("choice", choices=EXPORT_FORMATS), "columns": Kind("strings")},
}
REQUIRED = {kind: ("output", "n") if kind == "synthesize" else ("output",) for kind in STEP_KINDS}
TOP_KEYS = ("source", "model", "engine", "steps")


# -- the parsed pipeline ----------------------------------------------------------
@dataclass
class SourceSpec:
    """What to read: a path, folder, built-in name or URI, and reader options for `load_images`."""

    path: str
    options: dict = field(default_factory=dict)  # image_size, mode, image_column, ... as written

    def to_dict(self):
        return self.path if not self.options else {"path": self.path, **self.options}


@dataclass
class ModelSpec:
    """How models are trained (family, options, training settings), or a fitted checkpoint."""

    family: str | None = "vae"
    checkpoint: str | None = None
    options: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)  # the TRAINING_KEYS given, as written

    def to_dict(self) -> dict:
        if self.checkpoint is not None:
            return {"checkpoint": self.checkpoint}
        out: dict = {"family": self.family}
        if self.options:
            out["options"] = dict(self.options)
        return {**out, **self.training}


@dataclass
class StepSpec:
    """One step: its kind, name, output, what it reads (`input`, `model`, as written) and its settings."""

    kind: str
    name: str
    output: str
    input: str | None = None
    model: str | None = None
    settings: dict = field(default_factory=dict)  # every other key, as written

    def to_dict(self) -> dict:
        body = {"name": self.name, "output": self.output}
        if self.input is not None:
            body["input"] = self.input
        if self.model is not None:
            body["model"] = self.model
        return {self.kind: {**body, **self.settings}}


@dataclass
class PipelineSpec:
    """A checked pipeline. `inputs[i]` / `models[i]` are what step i reads once defaults are
    applied: a step name or SOURCE; a fit step's name, "checkpoint", TRAIN or None."""

    source: SourceSpec
    model: ModelSpec
    steps: list[StepSpec]
    engine: str = "local"
    engine_given: bool = field(default=False, compare=False)
    file: str | None = field(default=None, compare=False)
    base_dir: Path = field(default_factory=Path.cwd, compare=False)
    lines: dict = field(default_factory=dict, compare=False, repr=False)
    inputs: list = field(default_factory=list, compare=False, repr=False)
    models: list = field(default_factory=list, compare=False, repr=False)

    def to_dict(self) -> dict:
        """The pipeline as plain data that `parse` reads back to an equal spec."""
        out: dict = {"source": self.source.to_dict(), "model": self.model.to_dict()}
        if self.engine_given:
            out["engine"] = self.engine
        out["steps"] = [s.to_dict() for s in self.steps]
        return out

    def where(self, path: tuple) -> str:
        """`FILE line N: key.path`: where a one-line error points."""
        return _where(self.file, self.lines, path)

    def step_path(self, i: int, *keys) -> tuple:
        return ("steps", i, self.steps[i].kind, *keys)

    def resolve(self, path: str) -> Path:
        """A path as written in the file, relative to the file's folder."""
        return (self.base_dir / os.path.expanduser(path)).absolute()

    def source_location(self) -> str | Path:
        """The source as `load_images` takes it: a URI or built-in name as is, else a resolved path."""
        from genaug.data.readers import BUILTIN_DATASETS

        text = self.source.path
        if _is_uri(text):
            return text
        path = self.resolve(text)
        if not os.path.lexists(path) and text in BUILTIN_DATASETS:
            return text
        return path

    def outputs(self, i: int) -> list[tuple[tuple, Path]]:
        """(key path, resolved path) of each file step i writes."""
        step = self.steps[i]
        found = [(self.step_path(i, "output"), self.resolve(step.output))]
        if step.kind == "rebalance" and step.settings.get("resampled") is not None:
            found.append((self.step_path(i, "resampled"), self.resolve(step.settings["resampled"])))
        return found

    def step_index(self, name: str) -> int:
        return next(i for i, s in enumerate(self.steps) if s.name == name)


# -- reading YAML with line numbers ------------------------------------------------
def load_yaml(path: str | os.PathLike) -> tuple[object, dict]:
    """(document, {key path: line}) of a YAML file, read by the SafeLoader's composer.

    The composer keeps each node's line; values are built by the safe
    constructor, one scalar at a time (never `yaml.load`). A duplicate key
    is an error (PyYAML would keep the last one silently).
    """
    file = str(path)
    try:
        text = Path(path).read_text("utf-8")
    except FileNotFoundError:
        raise GenaugError(f"pipeline file not found: {file}") from None
    except IsADirectoryError:
        raise GenaugError(f"pipeline file {file} is a folder") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GenaugError(f"cannot read pipeline file {file}: {getattr(e, 'strerror', None) or e}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise GenaugError(f"{file}{at}: not valid YAML: {problem}") from None
    if node is None:
        raise GenaugError(f"{file}: the pipeline file is empty")
    lines: dict = {}
    constructor = yaml.constructor.SafeConstructor()
    count = 0

    def walk(node, path: tuple, depth: int):
        nonlocal count
        count += 1
        if count > MAX_NODES or depth > MAX_DEPTH:
            raise GenaugError(f"{file} line {node.start_mark.line + 1}: the document is too large or too deeply nested")
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                key = _scalar(constructor, key_node) if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    where = _dotted(path) or "top level"
                    raise GenaugError(f"{file} line {line}: {where}: keys must be names, got {_show(key)}")
                if key in out:
                    raise GenaugError(f"{file} line {line}: {_dotted((*path, key))}: duplicate key")
                lines[(*path, key)] = line
                out[key] = walk(value_node, (*path, key), depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [walk(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        return _scalar(constructor, node)

    return walk(node, (), 0), lines


def _scalar(constructor, node):
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.YAMLError as e:
        raise GenaugError(f"line {node.start_mark.line + 1}: {getattr(e, 'problem', None) or e}") from None


# -- pass 1: the document's shape ------------------------------------------------------
def parse(
    doc, *, lines: dict | None = None, file: str | None = None, base_dir: str | os.PathLike | None = None
) -> PipelineSpec:
    """A PipelineSpec from a loaded document; one GenaugError line for the first problem."""
    lines = lines or {}
    base = Path(base_dir) if base_dir is not None else Path.cwd()

    def fail(path: tuple, problem: str):
        raise GenaugError(f"{_where(file, lines, path)}: {problem}")

    def check_keys(value, path: tuple, known: dict, what: str) -> dict:
        if not isinstance(value, dict):
            fail(path, f"{what} must be a mapping, got {_show(value)}")
        for key, v in value.items():
            if key not in known:
                fail((*path, key), f"unknown key '{shown(key, 60)}' in {what} (known: {', '.join(known)})")
            problem = known[key].problem(v)
            if problem is not None:
                fail((*path, key), problem)
        return value

    if not isinstance(doc, dict):
        fail((), f"a pipeline file is a mapping with {', '.join(TOP_KEYS)}; got {_show(doc)}")
    for key in doc:
        if key not in TOP_KEYS:
            fail((key,), f"unknown key '{shown(key, 60)}' (known: {', '.join(TOP_KEYS)})")
    # source
    if "source" not in doc:
        fail((), "missing key 'source' (what to read: a folder, .parquet, .npz, digits, a URI)")
    raw_source = doc["source"]
    if isinstance(raw_source, dict):
        check_keys(raw_source, ("source",), SOURCE_KEYS, "source")
        if "path" not in raw_source:
            fail(("source",), "missing key 'path' in source")
        source = SourceSpec(raw_source["path"], {k: v for k, v in raw_source.items() if k != "path"})
    else:
        problem = STR.problem(raw_source)
        if problem is not None:
            fail(("source",), f"{problem} (or a mapping with path and reader options)")
        source = SourceSpec(raw_source)
    # model
    raw_model = doc.get("model", {"family": "vae"})
    check_keys(raw_model, ("model",), MODEL_KEYS, "model")
    if "checkpoint" in raw_model:
        extra = next((k for k in raw_model if k != "checkpoint"), None)
        if extra is not None:
            fail(("model", extra), f"'{extra}' describes training; a model given as a checkpoint is not trained")
        model = ModelSpec(family=None, checkpoint=raw_model["checkpoint"])
    else:
        model = ModelSpec(
            family=raw_model.get("family", "vae"),
            options=dict(raw_model.get("options", {})),
            training={k: v for k, v in raw_model.items() if k in TRAINING_KEYS},
        )
    engine_given = "engine" in doc
    engine = doc.get("engine", "local")
    problem = Kind("choice", choices=ENGINES).problem(engine)
    if problem is not None:
        fail(("engine",), problem)
    # steps
    if "steps" not in doc:
        fail((), "missing key 'steps' (a list of steps: " + ", ".join(STEP_KINDS) + ")")
    raw_steps = doc["steps"]
    if not isinstance(raw_steps, list) or not raw_steps:
        fail(("steps",), f"must be a non-empty list of steps, got {_show(raw_steps)}")
    steps = []
    for i, item in enumerate(raw_steps):
        if not (isinstance(item, dict) and len(item) == 1):
            kinds = ", ".join(STEP_KINDS)
            fail(("steps", i), f"a step is one KIND: {{settings}} mapping (KIND: {kinds}); got {_show(item)}")
        (kind, body), = item.items()
        path = ("steps", i, kind)
        if kind not in STEP_KINDS:
            fail(path, f"unknown step kind '{shown(kind, 60)}' (known: {', '.join(STEP_KINDS)})")
        check_keys(body, path, STEP_KEYS[kind], f"a {kind} step")
        for key in REQUIRED[kind]:
            if key not in body:
                fail(path, f"missing key '{key}' in a {kind} step")
        if kind == "filter" and "drop" not in body and "keep" not in body:
            fail(path, "a filter step needs 'drop' (a boolean column) or 'keep' (a condition), or both")
        name = body.get("name", kind)
        if not _NAME.fullmatch(name) or name in (SOURCE, TRAIN, "checkpoint"):
            fail((*path, "name") if "name" in body else path,
                 f"step name '{shown(name, 60)}' must be a letter or _ then letters, digits, _ . - "
                 f"(not {SOURCE}, {TRAIN} or checkpoint)")
        if any(s.name == name for s in steps):
            fail((*path, "name") if "name" in body else path,
                 f"two steps are named '{name}'; give each a unique 'name'")
        settings = {k: v for k, v in body.items() if k not in ("name", "output", "input", "model")}
        steps.append(StepSpec(kind, name, body["output"], body.get("input"), body.get("model"), settings))
    spec = PipelineSpec(source, model, steps, engine, engine_given, file, base, lines)
    _resolve_references(spec, fail)
    _check_outputs(spec, fail)
    return spec


def _resolve_references(spec: PipelineSpec, fail: Callable) -> None:
    """Fill `spec.inputs` and `spec.models`: what each step reads, defaults applied, every name checked."""
    current = SOURCE
    last_fit = None
    kinds = {}
    for i, step in enumerate(spec.steps):
        reads_data = "input" in STEP_KEYS[step.kind]
        if reads_data:
            ref = step.input if step.input is not None else current
            if ref != SOURCE and ref not in kinds:
                before = ", ".join([SOURCE, *[n for n, k in kinds.items() if k in DATASET_STEPS]])
                fail(spec.step_path(i, "input"), f"'{shown(ref, 60)}' is not {SOURCE} or a step before this one "
                     f"(datasets to read: {before})")
            if ref != SOURCE and kinds[ref] not in DATASET_STEPS:
                fail(spec.step_path(i, "input"), f"step '{ref}' is a {kinds[ref]} step and writes no dataset to read")
            spec.inputs.append(ref)
        else:
            spec.inputs.append(None)
        spec.models.append(_model_of(spec, i, step, last_fit, kinds, fail) if "model" in STEP_KEYS[step.kind] else None)
        if step.kind == "fit":
            if spec.model.checkpoint is not None:
                fail(spec.step_path(i), "a fit step trains model.family, but the model is given as a checkpoint")
            last_fit = step.name
        kinds[step.name] = step.kind
        if step.kind in DATASET_STEPS:
            current = step.name


def _model_of(spec: PipelineSpec, i: int, step: StepSpec, last_fit, kinds: dict, fail: Callable):
    path = spec.step_path(i, "model")
    trains = step.kind in TRAINING_STEPS
    if step.model is None:
        if step.kind == "augment" and not step.settings.get("synthetic_ratio"):
            return None  # plain augmentation needs no model (nor depends on one)
        if last_fit is not None:
            return last_fit
        if spec.model.checkpoint is not None:
            return "checkpoint"
        if trains:
            return TRAIN
        fail(spec.step_path(i), f"a {step.kind} step needs a model: add a fit step before it, or model.checkpoint")
    if step.model == TRAIN:
        if not trains:
            fail(path, f"a {step.kind} step cannot train its own model; name a fit step")
        if spec.model.checkpoint is not None:
            fail(path, "model: train needs model.family, but the model is given as a checkpoint")
        return TRAIN
    if kinds.get(step.model) != "fit":
        fits = [n for n, k in kinds.items() if k == "fit"]
        also = f" or {TRAIN}" if trains else ""
        fail(path, f"'{shown(step.model, 60)}' is not a fit step before this one (fit steps: "
             f"{', '.join(fits) or 'none'}){'; use ' + TRAIN + ' to train one' if also else ''}")
    return step.model


def _check_outputs(spec: PipelineSpec, fail: Callable) -> None:
    """Every output distinct, none an input (the source, the checkpoint, a recipe, the pipeline file)."""
    from genaug.atomic import check_output

    inputs = []
    if not _is_uri(spec.source.path) and os.path.lexists(spec.resolve(spec.source.path)):
        inputs.append(("the source", spec.resolve(spec.source.path)))
    if spec.model.checkpoint is not None:
        inputs.append(("model.checkpoint", spec.resolve(spec.model.checkpoint)))
    if spec.file is not None:
        inputs.append(("the pipeline file", Path(spec.file).absolute()))
    for step in spec.steps:
        recipe = step.settings.get("recipe")
        if recipe is not None and spec.resolve(recipe).is_file():
            inputs.append((f"the recipe of step '{step.name}'", spec.resolve(recipe)))
    seen: dict[str, tuple] = {}
    for i, step in enumerate(spec.steps):
        for path, out in spec.outputs(i):
            key = os.path.realpath(out)
            if key in seen:
                fail(path, f"output {step.output if path[-1] == 'output' else out} is also written at "
                     f"{_where(None, spec.lines, seen[key]).lstrip(': ')}; every output needs its own path")
            seen[key] = path
            folder = step.kind == "export" and step.settings.get("format") == "folder"
            if step.kind == "fit" and out.suffix != ".safetensors":
                fail(path, f"a fit step writes a checkpoint: output must end in .safetensors, got {out.name}")
            try:
                if folder:
                    _check_folder_output(out, inputs)
                else:
                    check_output(out, inputs)
            except GenaugError as e:
                fail(path, str(e))


def _check_folder_output(out: Path, inputs) -> None:
    """A folder export may replace only a folder it wrote before (it holds its record file)."""
    from genaug.atomic import check_output

    if out.is_dir() and not out.is_symlink():
        if not (out / FOLDER_RECORD).is_file():
            raise GenaugError(f"output folder {out} exists and is not a genaug export; choose a new folder")
        check_output(out / FOLDER_RECORD, inputs)
        root = os.path.realpath(out)
        for role, src in inputs:  # replacing the folder would delete an input inside it
            if os.path.realpath(src) == root or os.path.realpath(src).startswith(os.path.join(root, "")):
                raise GenaugError(f"output {out} would overwrite {role} ({src}); choose another output path")
        return
    check_output(out, inputs)


# The file a folder export writes beside its images: its pipeline record.
FOLDER_RECORD = "genaug.json"


# -- pass 2: every setting through the job's own check -------------------------------
def check_settings(spec: PipelineSpec) -> None:
    """Run each setting through the check its job runs, before any work; one line naming the key.

    Imports torch (the jobs' modules); `parse` does not.
    """
    checks: list[tuple[tuple, Callable[[], object]]] = []
    add = lambda path, check: checks.append((path, check))  # noqa: E731
    model = spec.model
    families: dict = {}

    def family_of(ref):
        """The class of the model a step reads (`ref` from spec.models)."""
        if ref == "checkpoint":
            return families["checkpoint"]
        return families["family"]

    from genaug.train import TrainConfig, resolve_device
    from genaug.models.registry import get_family

    if model.checkpoint is not None:
        def read_checkpoint():
            from genaug.checkpoint import read_metadata

            meta = read_metadata(spec.resolve(model.checkpoint))
            families["checkpoint"] = get_family(meta["family"])
            families["checkpoint_classes"] = meta.get("num_classes", 0)

        add(("model", "checkpoint"), read_checkpoint)
    else:
        add(("model", "family"), lambda: families.__setitem__("family", get_family(model.family)))
        for key, value in model.training.items():
            field_name = TRAINING_KEYS[key][0]
            if key == "device":
                add(("model", key), lambda v=value: resolve_device(v))
            else:
                add(("model", key), lambda f=field_name, v=value: TrainConfig(**{f: v}).check())
        for key, value in model.options.items():
            add(("model", "options", key), lambda k=key, v=value: _build_on_meta(spec, {k: v}))
        if model.options:
            add(("model", "options"), lambda: _build_on_meta(spec, model.options))
    for path, check in checks:
        _run_check(spec, path, check)
    for i, step in enumerate(spec.steps):
        ref = "family" if step.kind == "fit" else spec.models[i]
        for path, check in _step_checks(spec, i, family_of(ref) if ref else None):
            _run_check(spec, path, check)
        if step.kind == "synthesize" and "label" in step.settings:
            ref = spec.models[i]
            conditional = (families.get("checkpoint_classes", 0) > 0 if ref == "checkpoint"
                           else spec.steps[spec.step_index(ref)].settings.get("conditional", False))  # fmt: skip
            if not conditional:
                _run_check(spec, spec.step_path(i, "label"), lambda: _raise(
                    "label needs a class-conditional model (a fit step with conditional: true)"))


def _run_check(spec: PipelineSpec, path: tuple, check: Callable) -> None:
    try:
        check()
    except GenaugError as e:
        raise GenaugError(f"{spec.where(path)}: {e}") from None


def _build_on_meta(spec: PipelineSpec, options: dict) -> None:
    """Build the family with `options` on the meta device (no memory, no data): the
    registry's and the family's own option checks, at a probe shape (the source's size when given)."""
    import torch

    from genaug.models.registry import build_model

    size = parse_size(spec.source.options.get("image_size")) or (16, 16)
    channels = 3 if spec.source.options.get("mode") == "rgb" else 1
    try:
        with torch.device("meta"):
            build_model(spec.model.family, (channels, *size), 0, **options)
    except GenaugError:
        raise
    except Exception:  # noqa: BLE001 - a family that cannot build on meta: the job checks it at its start
        pass


def _step_checks(spec: PipelineSpec, i: int, cls) -> list[tuple[tuple, Callable]]:
    """(key path, check) pairs for step i's settings: the jobs' own check functions."""
    from genaug.fit import check_llr, scoring_options
    from genaug.scoring import auto_uses_background, available_scores, needs_background, resolve_score
    from genaug.scoring.calibration import check_fraction

    step, s = spec.steps[i], spec.steps[i].settings

    def at(key: str) -> tuple:
        """The key's path when the file gives it, else the step's (the default is at fault)."""
        given = key in s or (key == "model" and step.model is not None)
        return spec.step_path(i, key) if given else spec.step_path(i)

    checks: list[tuple[tuple, Callable]] = []
    model_ref = spec.models[i]
    if step.kind == "fit":
        if "calibration_fraction" in s:
            fraction = s["calibration_fraction"]
            checks.append((at("calibration_fraction"), lambda: check_fraction("calibration-fraction", fraction)))
        checks.append((at("iwae_k"), lambda: scoring_options(cls, s.get("iwae_k"))))
        llr = s.get("llr")
        needed = llr if llr is not None else auto_uses_background(cls)
        checks.append((at("mutation_rate") if "mutation_rate" in s else at("llr"),
                       lambda: check_llr(cls, s.get("mutation_rate"), needed=needed)))
        checks.append((("model", "family"), lambda: available_scores(cls) or _raise(
            f"model family '{cls.name}' has neither a likelihood nor a raw score to calibrate")))
    elif step.kind == "detect_outliers":
        for key in ("fdr", "contamination"):
            if key in s:
                checks.append((at(key), lambda k=key: check_fraction(k, s[k])))
        checks.append((at("score"), lambda: resolve_score(s.get("score", "auto"), cls)))
        checks.append((at("iwae_k"), lambda: scoring_options(cls, s.get("iwae_k"))))
        if model_ref == TRAIN:
            needed = lambda: needs_background(resolve_score(s.get("score", "auto"), cls))  # noqa: E731
            checks.append((at("mutation_rate"), lambda: check_llr(cls, s.get("mutation_rate"), needed=needed())))
        elif "mutation_rate" in s:
            checks.append((at("mutation_rate"), lambda: _raise(
                "mutation_rate applies to self-audit (model: train); a fitted model's background model keeps its own")))
        if "refit" in s:
            from genaug.detect import check_refit

            checks.append((at("refit"), lambda: check_refit(s["refit"]) if model_ref == TRAIN else _raise(
                "refit applies to self-audit (model: train); a fitted model was trained on clean data")))
        if model_ref == TRAIN and "conformal" in s:
            checks.append((at("conformal"), lambda: _raise(
                "conformal applies to reference mode (a fitted model); self-audit fits its own null")))
        engine = s.get("engine", spec.engine)
        if engine == "ray":
            where = at("engine") if "engine" in s else ("engine",)
            checks.append((where, ray_engine))
    elif step.kind == "rebalance":
        from genaug.rebalance import AGGREGATES, METHODS, _check_alpha, _check_choice, _check_fit_boost, _check_fit_share

        checks.append((at("density"), lambda: _check_choice("density", s.get("density", "clusters"), METHODS)))
        checks.append((at("aggregate"), lambda: _check_choice("aggregate", s.get("aggregate", "product"), AGGREGATES)))
        if "alpha" in s:
            checks.append((at("alpha"), lambda: _check_alpha(s["alpha"])))
        if "fit_boost" in s:
            checks.append((at("fit_boost"), lambda: _check_fit_boost(s["fit_boost"]) > 1
                           and cls.require("nll", job="rebalance fit_boost")))
        if "fit_share" in s:
            checks.append((at("fit_share"), lambda: _check_fit_share(s["fit_share"])))
        checks.append((at("model"), lambda: cls.require("features", job="rebalance")))
        if s.get("synthesize"):
            checks.append((at("synthesize"), lambda: cls.require("decode", job="rebalance synthesize")))
    elif step.kind == "synthesize":
        checks.append((at("model"), lambda: cls.require("sample", job="synthesize")))
        if "filter_fdr" in s:
            checks.append((at("filter_fdr"), lambda: check_fraction("filter-fdr", s["filter_fdr"])))
    elif step.kind == "augment":
        from genaug.augment import load_recipe

        checks.append((at("recipe"), lambda: load_recipe(recipe_location(spec, s.get("recipe", "light")))))
        if s.get("synthetic_ratio"):
            checks.append((at("synthetic_ratio"), lambda: cls.require("sample", job="augment synthetic_ratio")))
    elif step.kind == "export":
        columns = s.get("columns")
        if columns is not None and "image" not in columns:
            checks.append((at("columns"), lambda: _raise("columns must include 'image'")))
        if columns is not None and len(set(columns)) != len(columns):
            checks.append((at("columns"), lambda: _raise("columns names a column twice")))
    return checks


def ray_engine():
    """The Ray engine module, imported on demand; one line when it (or Ray) is not installed."""
    from importlib import import_module

    try:
        return import_module("genaug.pipelines.engines.ray")
    except ModuleNotFoundError as e:
        if e.name and (e.name.startswith("genaug.pipelines.engines") or e.name.split(".")[0] == "ray"):
            raise GenaugError(
                f"engine ray is not available: {e.name} is not installed; "
                "pip install 'genaug[ray]', or use engine local"
            ) from None
        raise


def recipe_location(spec: PipelineSpec, recipe: str) -> str | Path:
    """An augment recipe: a built-in name as is, else a file path relative to the pipeline."""
    from genaug.augment import RECIPES

    path = spec.resolve(recipe)
    return recipe if recipe in RECIPES and not path.exists() else path


def _raise(message: str):
    raise GenaugError(message)


# -- small helpers -----------------------------------------------------------------
def parse_size(value) -> tuple[int, int] | None:
    """`image_size` as (H, W): N, 'N', 'HxW' or [H, W]; None when absent or malformed."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value, value) if value >= 1 else None
    if isinstance(value, str):
        m = _SIZE.fullmatch(value)
        if not m:
            return None
        h, w = int(m.group(1)), int(m.group(2) or m.group(1))
        return (h, w) if h >= 1 and w >= 1 else None
    sides = value if isinstance(value, list) and len(value) == 2 else []
    if sides and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sides):
        return value[0], value[1]
    return None


def parse_condition(text: str) -> tuple[str, str, object]:
    """(column, operator, value) of a `keep` condition; the value read as a YAML scalar (0.5, true, outlier)."""
    column, op, raw = _CONDITION.fullmatch(text).groups()
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return column, op, value


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _is_uri(text: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text))


def _where(file: str | None, lines: dict, path: tuple) -> str:
    line = lines.get(path)
    probe = path
    while probe and line is None:  # the key itself, else its nearest parent with a line
        probe = probe[:-1]
        line = lines.get(probe)
    at = f"line {line}" if line is not None else ""
    head = " ".join(p for p in (file or "", at) if p)
    key = _dotted(path)
    return f"{head}: {key}" if head and key else head or key or "pipeline"


def _dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _show(value) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return shown(repr(value), 60)
