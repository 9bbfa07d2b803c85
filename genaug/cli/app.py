"""The typer app behind the `genaug` command.

Every command turns a `GenaugError` (bad input) into one line on stderr and
exit code 2; anything unexpected becomes one line and exit code 1
(`GENAUG_DEBUG=1` shows the traceback); Ctrl-C is one line and exit code 130.
Progress and summaries go to stderr, results (tables) to stdout. Both
consoles are `SafeConsole`s: file names, ids and labels print literally,
never as markup or terminal control sequences.
"""

from __future__ import annotations

import functools
import math
import os
import shlex
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from genaug._version import __version__
from genaug.errors import GenaugError, first_line
from genaug.terminal import SafeConsole, inert

app = typer.Typer(
    name="genaug",
    help="Generative models as data-quality tools for image datasets: outliers, rebalancing, synthesis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
out = SafeConsole(soft_wrap=True)
err = SafeConsole(stderr=True, soft_wrap=True)
# The most a seed may be: torch and numpy both take any int64 >= 0.
MAX_SEED = 2**63 - 1
# `info` shows at most this many classes or characters of a checkpoint field.
INFO_MAX_CLASSES = 50
INFO_MAX_CHARS = 400


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `genaug` console script; returns the exit code.

    Usage errors (a missing -o, an unknown option, a value of the wrong type)
    are one line on stderr and exit code 2, like every other bad input,
    instead of click's boxed usage text.
    """
    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    import warnings

    from genaug.errors import GenaugWarning

    warnings.simplefilter("ignore", GenaugWarning)  # each command prints its result's warnings itself
    try:
        code = app(args=args or ["--help"], prog_name="genaug", standalone_mode=False)
    except KeyboardInterrupt:
        say_interrupted()
        return 130
    except Exception as e:
        # click turns a Ctrl-C while parsing into Abort (a RuntimeError).
        if type(e).__name__ == "Abort":
            say_interrupted()
            return 130
        # Typer's (vendored or external) click exceptions: duck-typed so any typer>=0.12 works.
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        print_error("error:", " ".join(e.format_message().split()) + hint)
        if "--json" in args:  # the command never ran, so its wrapper could not answer in JSON
            _json.update(on=True, command=args[0] if args and not args[0].startswith("-") else "")
            _emit_error(e.format_message() + hint, int(e.exit_code))
        return int(e.exit_code)
    if code == 130:
        # typer turns a Ctrl-C anywhere in a command (or in its own lazy
        # imports while parsing) into a silent exit code 130.
        say_interrupted()
    return code if isinstance(code, int) else 0


def say_interrupted() -> None:
    """The one line a Ctrl-C prints, written past rich and Python's stream buffers.

    The interrupt may have cut a progress display short, leaving rich
    capturing output, or a buffered write half done: `os.write` on the
    descriptor reaches the terminal whatever state they are in.
    """
    try:
        sys.stderr.flush()
    except Exception:
        pass
    try:
        os.write(sys.stderr.fileno(), b"interrupted\n")
    except (OSError, ValueError, AttributeError):  # no real descriptor (a captured stream): print normally
        try:
            sys.stderr.write("interrupted\n")
        except Exception:
            pass


def print_error(prefix: str, message: str) -> None:
    """`prefix message` as one red-prefixed line on stderr; never raises.

    The message usually quotes user text (a path, an id, a label): it is
    printed literally with control characters escaped, and should even the
    console fail (a closed stderr, an encoding it cannot write), the line
    goes out as plain ASCII or not at all rather than a second error.
    """
    line = " ".join(inert(message).split())
    try:
        err.print(Text.assemble((prefix, "red"), " " if line else "", line), soft_wrap=True)
    except Exception:
        try:  # unbuffered: works even when the console failed mid-write
            os.write(2, f"{prefix} {line}".strip().encode("ascii", "backslashreplace") + b"\n")
        except OSError:
            pass


def handles_errors(command):
    """Turn errors into one line and a non-zero exit instead of a traceback; with --json
    (`json_output`), the command's tables are silenced and its `emit` (or the error) is
    the one JSON object on stdout."""
    name = command.__name__.replace("_", "-")

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _json.update(on=bool(kwargs.get("json_output")), command=name, started=time.perf_counter())
        out.quiet = _json["on"]
        try:
            return command(*args, **kwargs)
        except GenaugError as e:
            print_error("error:", str(e))
            _emit_error(str(e), 2)
            raise typer.Exit(2) from None
        except typer.Exit:
            raise
        except Exception as e:  # a bug, not the user's input: still one line
            if os.environ.get("GENAUG_DEBUG"):
                raise
            msg = (str(e).strip().splitlines() or [""])[0]
            print_error("internal error:", f"{type(e).__name__}: {msg} (GENAUG_DEBUG=1 shows the traceback)")
            _emit_error(f"internal error: {type(e).__name__}: {msg}", 1)
            raise typer.Exit(1) from None
        finally:  # the next command in this process (a test, a notebook) starts plain
            _json["on"] = out.quiet = False

    return wrapper


# --json: whether the running command prints JSON, its name and when it started.
_json: dict = {"on": False, "command": "", "started": 0.0}
JsonOutput = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON object on stdout instead of tables: ok, command, what was done (counts, outputs, "
        "settings, warnings) and seconds; on an error, ok false, error and exit_code.",
    ),
]


def emit(**fields) -> None:
    """The command's JSON object on stdout, when --json is on (the one thing it prints there)."""
    if _json["on"]:
        _write_json({"ok": True, "command": _json["command"], **fields,
                     "seconds": round(time.perf_counter() - _json["started"], 3)})  # fmt: skip


def _emit_error(message: str, code: int) -> None:
    if _json["on"]:
        _write_json({"ok": False, "command": _json["command"], "error": " ".join(message.split()), "exit_code": code})


def _write_json(doc: dict) -> None:
    import json

    def plain(value):  # numpy numbers and arrays, paths, sets
        if hasattr(value, "tolist"):
            return value.tolist()
        return sorted(value) if isinstance(value, (set, frozenset)) else str(value)

    def finite(value):  # strict JSON: an undefined number is null, never NaN
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    sys.stdout.write(json.dumps(finite(json.loads(json.dumps(doc, default=plain))), allow_nan=False) + "\n")
    sys.stdout.flush()


def _version(value: bool) -> None:
    if value:
        out.print(f"genaug {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """genaug: find outliers, rebalance and synthesize image datasets with generative models."""


# -- shared options -----------------------------------------------------------
DataArg = Annotated[str, typer.Argument(help="Image folder, .parquet, .npz, or a built-in dataset name (digits).")]
ImageSize = Annotated[Optional[str], typer.Option("--image-size", help="Resize every image to N or HxW pixels.")]
# Fixed choices (the jobs' own tuples, copied here so `genaug --help` needs no torch; a test keeps them equal).
MODES = ("gray", "rgb")
ENGINES = ("local", "ray")
CONFORMAL, DEFAULT_CONFORMAL = ("extended", "exact"), "extended"
DENSITIES = ("clusters", "mixture", "knn", "kde", "gmm", "histogram")
AGGREGATES = ("product", "max")



def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum of `values`: typer shows and checks them as choices."""
    return Enum(name, {v: v for v in values}, type=str)


Mode, Density, Aggregate = _choices("Mode", MODES), _choices("Density", DENSITIES), _choices("Aggregate", AGGREGATES)
Engine = _choices("Engine", ENGINES)
Conformal = _choices("Conformal", CONFORMAL)


def _value(choice):
    """The plain string of a choice (the jobs take strings)."""
    return getattr(choice, "value", choice)


ColorMode = Annotated[
    Optional[Mode],
    typer.Option("--mode", case_sensitive=False,
                 help="Force gray or rgb; default keeps the data's (any colour image makes the set RGB)."),
]
ImageColumn = Annotated[Optional[str], typer.Option(help="Parquet column holding the images (default: auto).")]
LabelColumn = Annotated[Optional[str], typer.Option(help="Parquet column holding labels (default: 'label' if present).")]
IdColumn = Annotated[Optional[str], typer.Option(help="Parquet column holding ids (default: 'id' if present).")]
Family = Annotated[str, typer.Option("--model", help="Model family to train (see `genaug info --models`).")]
Epochs = Annotated[
    Optional[int],
    typer.Option(help="Maximum training epochs; early stopping may end sooner. Default: from the data size "
                 "(about 200,000 images' worth, 10 to 200 epochs).", show_default=False),
]
TimeLimit = Annotated[
    Optional[float],
    typer.Option("--time-limit", help="Stop training after this many minutes (a last validation, best weights kept)."),
]
BatchSize = Annotated[Optional[int], typer.Option(help="Training batch size. Default: the family's (128).")]
LearningRate = Annotated[
    Optional[float],
    typer.Option("--lr", help="Learning rate. Default: the family's (vae and ae 3e-3, autoregressive 1e-3)."),
]
Device = Annotated[str, typer.Option(help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")]
Seed = Annotated[int, typer.Option(help="Random seed: same seed, same result on CPU.", min=0, max=MAX_SEED)]
ModelOption = Annotated[
    Optional[list[str]], typer.Option("--model-option", help="Model constructor option KEY=VALUE, e.g. latent_dim=32.")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries on stderr.")]
Trim = Annotated[
    Optional[float],
    typer.Option(help="Share of each batch's worst-fit images left out of training (default: 0.1 in self-audit, 0 in fit)."),
]
IwaeK = Annotated[
    Optional[int], typer.Option(help="Importance samples for the VAE's likelihood bound. Default: 1 (the ELBO).", min=1)
]
MutationRate = Annotated[
    Optional[float],
    typer.Option(
        help="Share of pixels replaced by random colours in the llr background model's training images "
        "(default 0.2; Ren et al. 2019 found 0.1-0.3 best)."
    ),
]
AllowOutsideRoot = Annotated[
    bool,
    typer.Option(
        "--allow-outside-root",
        help="Read image paths in a Parquet file or links in a folder that lead outside the dataset's folder.",
    ),
]
MaxPixels = Annotated[
    Optional[int],
    typer.Option("--max-pixels", min=1, help="Refuse images with more pixels than this (default: 16,777,216 = 4096x4096)."),
]


def _load(data, image_size, mode, image_column, label_column, id_column, allow_outside_root=False, max_pixels=None):
    from genaug.data.readers import load_images

    return load_images(
        data,
        image_size=_parse_size(image_size),
        mode=_value(mode),
        image_column=image_column,
        label_column=label_column,
        id_column=id_column,
        allow_outside_root=allow_outside_root,
        max_pixels=max_pixels,
    )


def _parse_size(text: str | None):
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise GenaugError(f"--image-size takes N or HxW, got '{text}'") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise GenaugError(f"--image-size takes N or HxW with positive sizes, got '{text}'")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def _model_options(pairs: list[str] | None) -> dict:
    import json

    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise GenaugError(f"--model-option takes KEY=VALUE, got '{pair}'")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _train_config(epochs, batch_size, lr, device, seed, quiet, trim=None, time_limit=None):
    from genaug.train import TrainConfig

    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "time_limit": time_limit}
    for name, value in overrides.items():
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise GenaugError(f"--{name.replace('_', '-')} must be a positive finite number, got {value}")
    return TrainConfig(
        device=device,
        seed=seed,
        progress=not quiet,
        trim_fraction=trim,
        **{k: v for k, v in overrides.items() if v is not None},
    )


def _check_output(output: Path, *inputs: tuple[str, object]) -> Path:
    """Refuse an output that is one of the command's `(role, path)` inputs, or not a regular file or new name."""
    from genaug.atomic import check_output

    return check_output(output, inputs)


def _command_line() -> str:
    return shlex.join(["genaug", *sys.argv[1:]])


# -- commands ---------------------------------------------------------------
@app.command()
@handles_errors
def fit(
    data: DataArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (.safetensors).")],
    family: Family = "vae",
    conditional: Annotated[bool, typer.Option(help="Condition on labels (needed for synthesize --label).")] = False,
    calibration_fraction: Annotated[float, typer.Option(help="Share held out to calibrate p-values.")] = 0.2,
    iwae_k: IwaeK = None,
    llr: Annotated[
        Optional[bool],
        typer.Option(
            "--llr/--no-llr",
            help="Train a background model on pixel-perturbed images for the llr score, part of vae's default "
            "score (doubles training time). Default: on for vae, off for the autoregressive families (their auto "
            "is complexity); --no-llr makes a vae's auto score complexity.",
            show_default=False,
        ),
    ] = None,
    mutation_rate: MutationRate = None,
    epochs: Epochs = None,
    time_limit: TimeLimit = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    trim: Trim = None,
    device: Device = "auto",
    seed: Seed = 0,
    model_option: ModelOption = None,
    image_size: ImageSize = None,
    mode: ColorMode = None,
    image_column: ImageColumn = None,
    label_column: LabelColumn = None,
    id_column: IdColumn = None,
    allow_outside_root: AllowOutsideRoot = False,
    max_pixels: MaxPixels = None,
    quiet: Quiet = False,
    json_output: JsonOutput = False,
) -> None:
    """Train a model on DATA, hold out a calibration split, and save it."""
    from genaug.fit import fit as fit_model
    from genaug.models.store import model_hash, save_model

    if output.suffix != ".safetensors":
        raise GenaugError(f"-o must end in .safetensors, got {output}")
    _check_output(output, ("DATA", data))
    from genaug.data.disk_images import training_data

    # Parquet input over GENAUG_STREAM_BYTES decoded (default 1 GiB) trains from disk, batch by batch.
    images = training_data(data, image_size=_parse_size(image_size), mode=_value(mode), image_column=image_column,
                           label_column=label_column, id_column=id_column, allow_outside_root=allow_outside_root,
                           max_pixels=max_pixels)  # fmt: skip
    model = fit_model(
        images,
        family=family,
        conditional=conditional,
        model_options=_model_options(model_option),
        calibration_fraction=calibration_fraction,
        iwae_k=iwae_k,
        llr=llr,
        mutation_rate=mutation_rate,
        train_config=_train_config(epochs, batch_size, lr, device, seed, quiet, trim, time_limit=time_limit),
        console=None if quiet else err,
    )
    model.metadata["command"] = _command_line()
    save_model(model, output)
    from genaug import distributed

    if not distributed.is_main():
        return  # under torchrun rank 0 wrote the checkpoint, and it alone reports it
    n_cal = model.metadata["data"]["n_calibration"]
    if not quiet:
        err.print(f"saved {model.name} ({model_hash(model)}) to {output}; {n_cal} calibration scores stored")
    emit(output=str(output), family=model.name, model_hash=model_hash(model), n_images=len(images),
         n_calibration=n_cal, background=model.metadata.get("background") is not None,
         training=model.metadata.get("training"))  # fmt: skip


@app.command("detect-outliers")
@handles_errors
def detect_outliers(
    data: DataArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Parquet file to write.")],
    model_path: Annotated[
        Optional[Path], typer.Option(help="Fitted checkpoint (reference mode); without it, self-audit.")
    ] = None,
    family: Family = "vae",
    score: Annotated[
        str,
        typer.Option(
            help="auto (= ensemble of llr and knn for a checkpoint that has both, as genaug fit makes them for vae; llr in "
            "self-audit; complexity for the autoregressive families and a vae fitted with --no-llr), nll, complexity, "
            "llr (likelihood "
            "ratio against a background model: stored in the checkpoint, or trained per fold in self-audit), typicality (distance of the "
            "bits/dim from the data's typical value, two-sided), knn (distance to the nearest training image in the "
            "model's features; best on novel kinds of image in reference mode), a family's raw score (recon), or ensemble (mean "
            "robust z of llr and knn where the model has both, else of complexity, typicality and llr where fitted; a "
            "family's raw scores otherwise)."
        ),
    ] = "auto",
    fdr: Annotated[float, typer.Option(help="False discovery rate for Benjamini-Hochberg flags.")] = 0.05,
    contamination: Annotated[
        Optional[float], typer.Option(help="Flag this share of images instead of using --fdr.")
    ] = None,
    folds: Annotated[int, typer.Option(help="Cross-fitting folds in self-audit mode.")] = 2,
    iwae_k: IwaeK = None,
    mutation_rate: MutationRate = None,
    conformal: Annotated[
        Optional[Conformal],
        typer.Option(
            case_sensitive=False,
            help="Conformal p-values, with --model-path: extended (default; a fitted tail beyond the largest "
            "calibration score, so BH can flag far outliers even with a small calibration split) or exact "
            "(never below 1/(calibration scores + 1)).", show_default=False,
        ),
    ] = None,
    refit: Annotated[
        Optional[float],
        typer.Option(
            help="Self-audit: share of images, by first-round score, left out of a second round of fold models' "
            "training (twice the time), so a group of outliers the models fit well, like simple drawings among "
            "photos, is not learned as normal; 0.05 is the measured share. It can hurt outliers the first round "
            "ranks poorly. Default 0: one round.", show_default=False,
        ),
    ] = None,
    top: Annotated[int, typer.Option(help="Rows of the top-outlier table to print.")] = 10,
    report: Annotated[
        Optional[Path], typer.Option(help="Also write an HTML report (top outliers, edge cases, histogram) here.")
    ] = None,
    epochs: Epochs = None,
    time_limit: TimeLimit = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    trim: Trim = None,
    device: Device = "auto",
    seed: Seed = 0,
    model_option: ModelOption = None,
    image_size: ImageSize = None,
    mode: ColorMode = None,
    image_column: ImageColumn = None,
    label_column: LabelColumn = None,
    id_column: IdColumn = None,
    allow_outside_root: AllowOutsideRoot = False,
    max_pixels: MaxPixels = None,
    engine: Annotated[
        Engine,
        typer.Option(
            case_sensitive=False,
            help="Where scoring runs when DATA is Parquet and --model-path is given (the job then streams: "
            "bounded memory, same output): local (this process) or ray (Ray Data actors; pip install 'genaug[ray]').",
        ),
    ] = "local",
    ray_address: Annotated[
        Optional[str],
        typer.Option(help="With --engine ray: the cluster to join (ray://HOST:10001, or auto). Default: start a "
                     "local Ray for the job.", show_default=False),
    ] = None,
    ray_concurrency: Annotated[
        Optional[int],
        typer.Option(min=1, help="With --engine ray: scoring actors. Default: one per GPU, else 2.", show_default=False),
    ] = None,
    quiet: Quiet = False,
    json_output: JsonOutput = False,
) -> None:
    """Score every image of DATA, flag outliers, and write a ranked Parquet file.

    With --model-path and Parquet DATA (a file, a folder of Parquet files, a partitioned dataset or a
    glob) the job streams: memory stays bounded whatever the size, and the output is the same.
    """
    from genaug.data.streaming import is_parquet_source
    from genaug.models.store import load_model
    from genaug.train import resolve_device

    _check_output(output, ("DATA", data), ("--model-path", model_path))
    if report is not None:
        _check_output(report, ("DATA", data), ("--model-path", model_path), ("-o", output))
    engine = _value(engine)
    if engine == "ray" and model_path is None:
        raise GenaugError("--engine ray needs --model-path (reference mode); self-audit trains on DATA and runs locally")
    if engine != "ray" and (ray_address is not None or ray_concurrency is not None):
        raise GenaugError("--ray-address and --ray-concurrency go with --engine ray")
    if conformal is not None and model_path is None:
        raise GenaugError("--conformal applies to reference mode (--model-path); self-audit fits its own null")
    if refit is not None and model_path is not None:
        raise GenaugError("--refit applies to self-audit; a fitted model (--model-path) was trained on clean data")
    conformal = DEFAULT_CONFORMAL if conformal is None else _value(conformal)
    streams = model_path is not None and is_parquet_source(data)
    if engine == "ray" and not streams:
        raise GenaugError(
            f"--engine ray reads Parquet input (a .parquet file, a folder of Parquet files or a glob); {data} is not"
        )
    if streams:
        return _detect_streaming(
            data, output, model_path, report=report, top=top, engine=engine, ray_address=ray_address,
            ray_concurrency=ray_concurrency, device=device, quiet=quiet, score=score, fdr=fdr,
            contamination=contamination, iwae_k=iwae_k, mutation_rate=mutation_rate, conformal=conformal,
            image_size=_parse_size(image_size),
            mode=_value(mode), image_column=image_column, label_column=label_column, id_column=id_column,
            allow_outside_root=allow_outside_root, max_pixels=max_pixels,
        )  # fmt: skip
    from genaug.detect import detect_outliers as run_detection

    images = _load(data, image_size, mode, image_column, label_column, id_column, allow_outside_root, max_pixels)
    model = load_model(model_path, device=resolve_device(device)) if model_path is not None else None
    result = run_detection(
        images,
        model=model,
        family=family,
        model_options=_model_options(model_option),
        score=score,
        fdr=fdr,
        contamination=contamination,
        folds=folds,
        iwae_k=iwae_k,
        mutation_rate=mutation_rate,
        conformal=conformal,
        refit=refit,
        train_config=_train_config(epochs, batch_size, lr, device, seed, quiet, trim, time_limit=time_limit),
        console=None if quiet else err,
    )
    if model_path is not None:
        result.settings["model_path"] = str(model_path)
    table = result.write(output, command=_command_line())
    if report is not None:
        from genaug.report import write_report

        settings = {"version": __version__, "job": "detect-outliers", "command": _command_line(), **result.settings}
        write_report(table, report, settings=settings, class_names=result.data.class_names, title=f"genaug report: {output.name}")
    _say_detected(result, output, report, top, "local")


def _detect_streaming(data, output, model_path, *, report, top, engine, ray_address, ray_concurrency, device, quiet,
                      **options) -> None:  # fmt: skip
    """detect-outliers on Parquet input with a fitted model: streamed by the local or the Ray engine."""
    from genaug.train import resolve_device

    console = None if quiet else err
    if engine == "ray":
        from genaug.pipelines.engines import ray as ray_engine

        result = ray_engine.detect_outliers_parquet(
            data, output, model=model_path, address=ray_address, concurrency=ray_concurrency, console=console,
            command=_command_line(), **options,
        )  # fmt: skip
    else:
        from genaug.pipelines.engines import local

        result = local.detect_outliers_parquet(
            data, output, model=model_path, device=resolve_device(device), console=console, command=_command_line(),
            **options,
        )  # fmt: skip
    if report is not None:
        from genaug.report import write_report

        settings = {"version": __version__, "job": "detect-outliers", "command": _command_line(), **result.settings}
        write_report(output, report, settings=settings, class_names=result.class_names, title=f"genaug report: {output.name}")
    _say_detected(result, output, report, top, engine)


def _say_detected(result, output: Path, report: Path | None, top: int, engine: str) -> None:
    """A detection's warnings, top outliers and summary line, and its --json object."""
    _print_warnings(result.warnings)
    _print_top(result, top)
    n = len(result.score)
    rule = result.settings["flag_rule"]
    out.print(
        f"flagged {result.n_flagged} of {n} images ({rule}, {result.settings['mode']}, "
        f"score {result.settings['score']}) -> {output}",
        highlight=False,
    )
    emit(output=str(output), report=None if report is None else str(report), n_images=n, engine=engine,
         n_flagged=result.n_flagged, n_edge_cases=int((result.category == "edge-case").sum()),
         settings=result.settings, warnings=result.warnings)  # fmt: skip


def _print_top(result, n: int) -> None:
    if n <= 0:
        return
    rows = result.top_rows(n)
    table = Table(title=f"top {len(rows)} outliers", title_justify="left")
    for name in ("rank", "index", "id", "label", "score", "bits/dim", "p-value", "flagged"):
        # Ids are what users search for: wrap them rather than cut them short.
        table.add_column(name, justify="left" if name == "id" else "right", overflow="fold" if name == "id" else "ellipsis")
    for row in rows:
        table.add_row(
            str(row["rank"]),
            str(row["index"]),
            row["id"],
            row["label"] or "",
            f"{row['score']:.3f}",
            "" if row["bits_per_dim"] is None else f"{row['bits_per_dim']:.3f}",
            f"{row['p_value']:.2g}",
            "yes" if row["is_outlier"] else "",
        )
    out.print(table)


@app.command()
@handles_errors
def info(
    path: Annotated[Optional[str], typer.Argument(help="A dataset, a checkpoint (.safetensors) or a genaug Parquet output.")] = None,
    models: Annotated[bool, typer.Option("--models", help="List the model families.")] = False,
    image_size: ImageSize = None,
    mode: ColorMode = None,
    image_column: ImageColumn = None,
    label_column: LabelColumn = None,
    allow_outside_root: AllowOutsideRoot = False,
    max_pixels: MaxPixels = None,
    json_output: JsonOutput = False,
) -> None:
    """Summarise a dataset, a checkpoint, or the available model families."""
    if models or path is None:
        emit(models=_info_models())
    elif path.endswith(".safetensors"):
        emit(checkpoint=_info_checkpoint(path))
    else:
        emit(dataset=_info_dataset(path, image_size, mode, image_column, label_column, allow_outside_root, max_pixels))


def _info_models() -> list[dict]:
    """A table of the model families and what each can do (what the jobs check); returns its rows."""
    from genaug.models.registry import available_families, get_family
    from genaug.scoring import available_scores, resolve_score

    table = Table(title="model families", title_justify="left")
    table.add_column("family", no_wrap=True)
    for column in ("likelihood", "latent", "scores", "auto", "rebalance", "synthesize", "complete"):
        table.add_column(column)
    rows = []
    for name in available_families():
        try:
            cls = get_family(name)
        except GenaugError as e:  # a broken plug-in still lists, with why
            table.add_row(name, "", "", f"unavailable: {e}", "", "", "", "")
            rows.append({"family": name, "error": str(e)})
            continue
        caps = cls.capabilities()
        scores = available_scores(cls)
        # `auto` before training (self-audit; `genaug fit`'s default checkpoint for vae makes it llr + knn).
        row = {"family": name, "likelihood": cls.likelihood, "latent": cls.latent, "scores": scores,
               "auto": resolve_score("auto", cls) if scores else None,
               "rebalance": "features" in caps, "synthesize": "sample" in caps, "complete": "complete" in caps}
        rows.append(row)
        table.add_row(name, cls.likelihood, cls.latent, ", ".join(scores) or "none", row["auto"] or "",
                      *("yes" if row[k] else "no" for k in ("rebalance", "synthesize", "complete")))  # fmt: skip
    out.print(table)
    return rows


def _info_checkpoint(path: str) -> dict:
    from genaug.checkpoint import read_metadata

    meta = read_metadata(path)
    table = Table(title=f"checkpoint {path}", show_header=False, title_justify="left")
    table.add_column("field")
    table.add_column("value")
    data = meta.get("data", {})
    cal = meta.get("calibration") or {}
    training = meta.get("training") or {}
    rows = {
        "family": meta.get("family"),
        "image shape (C,H,W)": meta.get("image_shape"),
        "conditional classes": meta.get("num_classes") or "no",
        "options": meta.get("init_args"),
        "class names": meta.get("class_names"),
        "trained on": f"{data.get('source')} ({data.get('n_train')} images, fingerprint {str(data.get('fingerprint'))[:12]})",
        "calibration scores": len(cal.get("bits_per_dim", [])),
        "training": training.get("summary", training),
        "genaug version": meta.get("genaug_version"),
    }
    for key, value in rows.items():
        table.add_row(key, _cut(value))
    out.print(table)
    return {k: v for k, v in meta.items() if k != "calibration"} | {"n_calibration": rows["calibration scores"]}


def _cut(value: object, limit: int = INFO_MAX_CHARS) -> str:
    """`str(value)`, cut to `limit` characters: a checkpoint or dataset may hold huge fields."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _info_dataset(path: str, image_size, mode, image_column, label_column, allow_outside_root, max_pixels) -> dict:
    import numpy as np

    images = _load(path, image_size, mode, image_column, label_column, None, allow_outside_root, max_pixels)
    c, h, w = images.shape
    summary = {"source": images.source, "n_images": len(images), "shape": [c, h, w], "classes": None}
    out.print(f"{images.source}: {len(images)} images, {c}x{h}x{w} (C x H x W), uint8", highlight=False)
    if images.labels is not None:
        counts = np.bincount(images.labels, minlength=images.num_classes)
        names = images.class_names or [str(i) for i in range(len(counts))]
        shown = [f"{_cut(n)} ({k})" for n, k in zip(names[:INFO_MAX_CLASSES], counts)]
        if len(counts) > INFO_MAX_CLASSES:
            shown.append(f"... {len(counts) - INFO_MAX_CLASSES} more")
        out.print(f"{len(counts)} classes: " + ", ".join(shown))
        summary["classes"] = dict(zip(names, counts.tolist()))
    else:
        out.print("no labels")
    if path.endswith((".parquet", ".pq")):
        from genaug.data.parquet import read_genaug_metadata

        meta = read_genaug_metadata(path)
        if meta:
            out.print(f"written by genaug {meta.get('version')}: {meta.get('command') or meta.get('job')}", highlight=False)
            summary["genaug"] = meta
    return summary


@app.command()
@handles_errors
def synthesize(
    model_path: Annotated[Path, typer.Option(help="Fitted checkpoint to sample from.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Parquet file to write.")],
    n: Annotated[Optional[int], typer.Option("-n", "--n", help="Number of synthetic images (not with --complete).")] = None,
    label: Annotated[Optional[str], typer.Option(help="Class (index or name) to sample; needs a conditional model.")] = None,
    temperature: Annotated[float, typer.Option(help="Prior temperature: <1 safer, >1 more diverse.")] = 1.0,
    filter_fdr: Annotated[
        Optional[float], typer.Option(help="Reject samples BH flags as outliers against the real data at this FDR.")
    ] = None,
    complete: Annotated[
        Optional[str],
        typer.Option(
            "--complete",
            help="Complete these images instead (folder, .parquet, .npz or digits, read at the model's size): "
            "keep the top rows, draw the rest. Autoregressive families.",
        ),
    ] = None,
    keep_rows: Annotated[
        Optional[int], typer.Option(help="With --complete: rows kept from the top of each image (default: half).")
    ] = None,
    keep_mask: Annotated[
        Optional[Path],
        typer.Option(help="With --complete: a grey image of the model's size; white (>= 128) pixels are kept."),
    ] = None,
    completions: Annotated[int, typer.Option(help="With --complete: completions drawn per image.", min=1)] = 1,
    image_column: ImageColumn = None,
    label_column: LabelColumn = None,
    id_column: IdColumn = None,
    allow_outside_root: AllowOutsideRoot = False,
    max_pixels: MaxPixels = None,
    device: Device = "auto",
    seed: Seed = 0,
    quiet: Quiet = False,
    json_output: JsonOutput = False,
) -> None:
    """Sample N synthetic images from a fitted model into a Parquet file, or complete real images (--complete)."""
    completion_only = {"--keep-rows": keep_rows, "--keep-mask": keep_mask}
    if complete is None:
        given = [name for name, value in completion_only.items() if value is not None]
        if given or completions != 1:
            raise GenaugError(f"{', '.join(given) or '--completions'} needs --complete DATA")
        if n is None:
            raise GenaugError("give -n (the number of images to sample), or --complete DATA")
    elif n is not None or filter_fdr is not None or label is not None:
        raise GenaugError("--complete draws --completions per input image; it takes no -n, --label or --filter-fdr")
    _check_output(output, ("--model-path", model_path), ("--complete", complete), ("--keep-mask", keep_mask))
    from genaug.data.parquet import write_image_table  # torch: after the checks that need none
    from genaug.models.store import load_model
    from genaug.synthesize import synthesize as run_synthesis
    from genaug.train import resolve_device

    model = load_model(model_path, device=resolve_device(device))
    if complete is not None:
        from genaug.completion import complete as run_completion

        c, h, w = model.image_shape
        type(model).require("complete", job="--complete")
        data = _load(complete, f"{h}x{w}", "gray" if c == 1 else "rgb", image_column, label_column, id_column,
                     allow_outside_root, max_pixels)  # fmt: skip
        mask = None if keep_mask is None else _read_keep_mask(keep_mask, (h, w))
        result = run_completion(
            model, data, keep_rows=keep_rows, mask=mask, completions=completions, temperature=temperature,
            seed=seed, console=None if quiet else err,
        )  # fmt: skip
        result.settings.update(model_path=str(model_path), data=str(complete))
        result.write(output, command=_command_line(), version=__version__)
        out.print(f"wrote {len(result.data)} completions of {len(data)} images -> {output}", highlight=False)
        emit(output=str(output), n_images=len(data), n_completions=len(result.data), settings=result.settings)
        return
    result = run_synthesis(
        model,
        n,
        label=_class_index(label, model.metadata.get("class_names")),
        temperature=temperature,
        filter_fdr=filter_fdr,
        seed=seed,
        console=None if quiet else err,
    )
    write_image_table(
        output,
        result.data,
        result.columns(),
        index=[None] * len(result.data),
        genaug_metadata={
            "version": __version__,
            "job": "synthesize",
            "command": _command_line(),
            "model_path": str(model_path),
            "model_hash": result.model_hash,
            "n_drawn": result.n_drawn,
            **result.settings,
        },
    )
    kept = f" (kept {n} of {result.n_drawn} drawn)" if filter_fdr is not None else ""
    out.print(f"wrote {n} synthetic images{kept} -> {output}", highlight=False)
    emit(output=str(output), n=n, n_drawn=result.n_drawn, model_hash=result.model_hash, settings=result.settings)


def _read_keep_mask(path: Path, size: tuple[int, int]):
    """The --keep-mask image as bool [H, W] (white = keep); its size must be the model's."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.size != (size[1], size[0]):  # PIL gives (W, H); checked before decoding
                raise GenaugError(
                    f"--keep-mask {path} is {image.size[1]}x{image.size[0]} but the model's images are {size[0]}x{size[1]}"
                )
            return np.asarray(image.convert("L")) >= 128
    except (OSError, UnidentifiedImageError) as e:
        raise GenaugError(f"cannot read --keep-mask {path}: {first_line(e)}") from None


def _class_index(label: str | None, class_names: list[str] | None) -> int | None:
    """A class given by name (preferred) or index."""
    if label is None:
        return None
    if class_names and label in class_names:
        return class_names.index(label)
    try:
        return int(label)
    except ValueError:
        raise GenaugError(f"--label '{label}' is not a class name ({', '.join(class_names or [])}) or index") from None


@app.command()
@handles_errors
def rebalance(
    data: DataArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Parquet file to write (every input row + weights).")],
    model_path: Annotated[Optional[Path], typer.Option(help="Fitted checkpoint; without it a model is trained on DATA.")] = None,
    family: Family = "vae",
    density: Annotated[
        Density,
        typer.Option(
            help="How rarity is measured in the model's features: clusters (k-means clusters drawn equally: "
            "rare groups), mixture (the same with a Gaussian mixture), knn (distance to the neighbour 5% of the "
            "images away: rare groups and isolated images, but thins the common ones), kde or gmm (joint density: "
            "isolated images only), histogram (per dimension, as DB-VAE)."
        ),
    ] = "clusters",
    components: Annotated[
        Optional[int],
        typer.Option(help="Groups for mixture and clusters and for the up-weighted-groups report (default 8); "
                     "components for gmm."),
    ] = None,
    bins: Annotated[int, typer.Option(help="Histogram bins per latent dimension.")] = 10,
    alpha: Annotated[
        Optional[float], typer.Option(help="Smoothing: larger = closer to uniform weights (default: per density).")
    ] = None,
    aggregate: Annotated[
        Aggregate, typer.Option(help="Histogram: combine dimensions by product (paper) or max (reference code).")
    ] = "product",
    fit_boost: Annotated[
        float,
        typer.Option(help="Also draw the images the model fits worst (complexity) this many times as often, e.g. 3: "
                     "finds rare groups the features hide, but also corrupt images (drop those first with "
                     "detect-outliers) and lowers a rare group the model fits well. Needs a likelihood; 1 = off."),
    ] = 1.0,
    fit_share: Annotated[float, typer.Option(help="Share of the images --fit-boost counts as worst fitted.")] = 0.1,
    per_class: Annotated[bool, typer.Option(help="Rebalance within each label.")] = False,
    size: Annotated[Optional[int], typer.Option(help="Rows in the weighted resample (default: N).")] = None,
    synthesize: Annotated[int, typer.Option(help="Add this many latent-SMOTE images of the rare regions.")] = 0,
    resampled: Annotated[Optional[Path], typer.Option(help="Also write the resample, one row per draw.")] = None,
    epochs: Epochs = None,
    time_limit: TimeLimit = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    device: Device = "auto",
    seed: Seed = 0,
    model_option: ModelOption = None,
    image_size: ImageSize = None,
    mode: ColorMode = None,
    image_column: ImageColumn = None,
    label_column: LabelColumn = None,
    id_column: IdColumn = None,
    allow_outside_root: AllowOutsideRoot = False,
    max_pixels: MaxPixels = None,
    quiet: Quiet = False,
    json_output: JsonOutput = False,
) -> None:
    """Weight images by the rarity of their latent code (DB-VAE) and resample."""
    from genaug.models.store import load_model
    from genaug.rebalance import rebalance as run_rebalance
    from genaug.train import resolve_device

    _check_output(output, ("DATA", data), ("--model-path", model_path), ("--resampled", resampled))
    if resampled is not None:
        _check_output(resampled, ("DATA", data), ("--model-path", model_path))
    images = _load(data, image_size, mode, image_column, label_column, id_column, allow_outside_root, max_pixels)
    model = load_model(model_path, device=resolve_device(device)) if model_path is not None else None
    result = run_rebalance(
        images,
        model=model,
        family=family,
        model_options=_model_options(model_option),
        train_config=_train_config(epochs, batch_size, lr, device, seed, quiet, time_limit=time_limit),
        density=_value(density),
        bins=bins,
        alpha=alpha,
        aggregate=_value(aggregate),
        components=components,
        fit_boost=fit_boost,
        fit_share=fit_share,
        per_class=per_class,
        size=size,
        synthesize=synthesize,
        seed=seed,
        console=None if quiet else err,
    )
    result.write(output, command=_command_line(), resampled_path=resampled)
    _print_warnings(result.warnings)
    _print_groups(result.groups)
    _print_worst_fit(result.worst_fit_report)
    out.print(str(result.summary), highlight=False)
    extra = f" + {synthesize} synthetic rows" if synthesize else ""
    also = f"; resample -> {resampled}" if resampled is not None else ""
    out.print(f"wrote {len(images)} weighted rows{extra} -> {output}{also}", highlight=False)
    emit(output=str(output), resampled=None if resampled is None else str(resampled), n_images=len(images),
         n_synthetic=synthesize, summary=result.summary.to_dict(), upweighted_groups=result.groups,
         worst_fit=result.worst_fit_report, settings=result.settings, warnings=result.warnings)  # fmt: skip


def _print_warnings(warnings: list[str]) -> None:
    """Each of a job's warnings on stderr, one line each."""
    for warning in warnings:
        err.print(Text.assemble(("warning:", "yellow"), " ", inert(warning)))


def _print_groups(groups: list[dict], shown: int = 5) -> None:
    """The up-weighted groups, highest weight first, with a few example ids."""
    if not groups:
        out.print("no group up-weighted", highlight=False)
        return
    out.print(f"up-weighted {len(groups)} group(s):", highlight=False)
    for g in groups[:shown]:
        out.print(
            Text.assemble(
                "  ",
                inert(g["group"]),
                f": {g['size']} images, weight {g['mean_weight']:.1f}x, "
                f"drawn {g['share_before']:.1%} -> {g['share_after']:.1%}; e.g. ",
                inert(", ".join(g["examples"][:3])),
            )
        )
    if len(groups) > shown:
        out.print(f"  ... and {len(groups) - shown} more (all in the output's metadata)", highlight=False)


def _print_worst_fit(report: dict | None) -> None:
    """The worst-fitted images the weights boost, with a few example ids."""
    if report is None:
        return
    out.print(
        Text.assemble(
            f"worst-fitted {report['size']} images ({report['share']:.0%}) drawn {report['boost']:g}x as often; "
            "worst: ",
            inert(", ".join(report["examples"][:3])),
        )
    )


@app.command()
@handles_errors
def augment(
    data: Annotated[
        Optional[str], typer.Argument(help="Image folder, .parquet, .npz, or a built-in dataset name (digits).")
    ] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Parquet file to write.")] = None,
    recipe: Annotated[str, typer.Option(help="light, medium, heavy, or a recipe YAML file (see --show-recipe).")] = "light",
    copies: Annotated[int, typer.Option(help="Augmented copies of every image.")] = 1,
    keep_originals: Annotated[bool, typer.Option(help="Also write the unchanged originals.")] = False,
    synthetic_ratio: Annotated[
        float, typer.Option(help="Synthetic images per augmented image, sampled from --model-path.")
    ] = 0.0,
    model_path: Annotated[Optional[Path], typer.Option(help="Fitted checkpoint to sample synthetic images from.")] = None,
    show_recipe: Annotated[bool, typer.Option(help="Print the recipe as YAML and exit.")] = False,
    device: Device = "auto",
    seed: Seed = 0,
    image_size: ImageSize = None,
    mode: ColorMode = None,
    image_column: ImageColumn = None,
    label_column: LabelColumn = None,
    id_column: IdColumn = None,
    allow_outside_root: AllowOutsideRoot = False,
    max_pixels: MaxPixels = None,
    quiet: Quiet = False,
    json_output: JsonOutput = False,
) -> None:
    """Augment DATA with an albumentations recipe, optionally mixed with synthetic images."""
    from genaug.augment import recipe_to_yaml
    from genaug.data.parquet import write_table
    from genaug.models.store import load_model
    from genaug.synthesize import augmented_table
    from genaug.train import resolve_device

    if show_recipe:
        text = recipe_to_yaml(recipe)
        out.print(text, highlight=False, markup=False)
        emit(recipe=text)
        return
    missing = [name for name, value in (("DATA", data), ("-o OUTPUT", output)) if value is None]
    if missing:
        raise GenaugError(f"augment needs {' and '.join(missing)} (only --show-recipe goes without them)")
    _check_output(output, ("DATA", data), ("--recipe", recipe), ("--model-path", model_path))
    images = _load(data, image_size, mode, image_column, label_column, id_column, allow_outside_root, max_pixels)
    model = load_model(model_path, device=resolve_device(device)) if model_path is not None else None
    table, settings = augmented_table(
        images,
        recipe,
        copies=copies,
        seed=seed,
        keep_originals=keep_originals,
        model=model,
        synthetic_ratio=synthetic_ratio,
        console=None if quiet else err,
    )
    meta = {"version": __version__, "job": "augment", "command": _command_line(), **settings}
    write_table(table, output, genaug_metadata=meta, class_names=images.class_names)
    out.print(
        f"wrote {table.num_rows} rows ({settings['n_augmented']} augmented, {settings['n_synthetic']} synthetic"
        f"{', originals kept' if keep_originals else ''}) -> {output}",
        highlight=False,
    )
    emit(output=str(output), n_rows=table.num_rows, settings=settings)


@app.command()
@handles_errors
def env(json_output: JsonOutput = False) -> None:
    """Versions, devices, threads and optional extras: what a bug report needs."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    import torch

    packages = {name: installed(name) for name in (
        "torch", "torchvision", "numpy", "scipy", "scikit-learn", "pyarrow", "albumentations", "safetensors",
        "pillow", "typer", "rich", "fsspec")}  # fmt: skip
    extras = {name: installed(name) for name in ("datasets", "ray", "pyod", "s3fs", "gcsfs", "pandas")}
    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    doc = {
        "genaug": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "extras": extras,
        "cuda": {"available": cuda, "version": torch.version.cuda, "devices": devices},
        "threads": {"torch": torch.get_num_threads(), "cpus": os.cpu_count()},
    }
    table = Table(title="genaug environment", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value")
    for key in ("genaug", "python", "platform"):
        table.add_row(key, doc[key])
    for name, got in {**packages, **{f"{k} (extra)": v for k, v in extras.items()}}.items():
        table.add_row(name, got or "not installed")
    table.add_row("CUDA", f"{torch.version.cuda} ({', '.join(devices)})" if cuda else "not available")
    table.add_row("threads", f"{doc['threads']['torch']} torch threads, {doc['threads']['cpus']} CPUs")
    out.print(table)
    emit(**doc)


# Commands kept in their own modules register themselves on `app` when imported.
from genaug.cli import evaluate_cmd, report_cmd, run_cmd  # noqa: E402,F401
