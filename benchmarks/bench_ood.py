"""genaug's detection scores beside PyOD's detectors, in one run, on emoji outlier tasks.

    python benchmarks/bench_ood.py --emoji-dir ../shared/data                    # 1 seed, 1 min per model
    python benchmarks/bench_ood.py --emoji-dir ../shared/data --quick            # smoke run, a few minutes
    python benchmarks/bench_ood.py --emoji-dir DIR --seeds 3 --time-limit 2 --families vae
    python benchmarks/bench_ood.py --emoji-dir DIR --novel "Food & Drink" 8 --scores nll auto

Data: `DIR/emoji-google-32.npz` and `DIR/emoji-twitter-32.npz`, the same 3,491
emoji drawn in two styles (32x32 RGB; see the data README). Tasks, each
seeded, each run in both directions where it has two sides:

1. novel category (reference mode): fit on a random 80% of the images of
   every category but one, in one style; test on the other 20% (inliers)
   plus every image of the held-out category (outliers). `--novel` picks
   the held-out categories.
2. style (reference mode): fit on 80% of one style; test on its other 20%
   (inliers) plus drawings in the other style making 5% of the test set
   (outliers), of emoji whose names are not among the test inliers.
3. self-audit, 2% injected: all of one style with 2% of the images
   replaced by the other style's drawings of *other* emoji among those
   replaced, so no foreign drawing has its twin left in the set. No clean
   reference: genaug cross-fits (`detect_outliers(data, family=...)`),
   PyOD fits on the contaminated set and scores that same set.
4. self-audit, photos injected (`photo`): foreign images of another kind.
   All of one style with 2% of the images replaced by 32x32 RGB crops of
   the two photographs scikit-learn ships (`load_sample_images`; crops of
   32..128 px, downscaled), and the reverse: 3,491 such photo crops with 2%
   replaced by emoji of that style.
5. self-audit, nothing injected: the same on each clean set (both styles,
   and the photo crops when `photo` runs); the share flagged is all false
   discoveries (target for genaug: at most 0.5%).
6. foreign kind (reference mode, `foreign`): fit on 80% of the Google
   emoji; test on their other 20% plus photo crops making 5% of the test
   set; and the reverse (fit on photo crops, emoji as the 5%). The
   reference-mode case where a score separates well, so conformal BH
   should find most outliers (target: recall >= 0.5 where AUROC >= 0.95).
7. grey (self-audit, `grey`): task 4 at 28x28 in grey (luminance, then an
   antialiased downscale): grey photo crops with 2% grey Google emoji, and
   the reverse; with `clean`, the clean grey photo crops too. The shape of
   the small grey natural-image sets users audit, from data shipped here.

`--tasks` picks among novel, style, injected, photo, clean, foreign, grey (default: all).

Methods. genaug: every `--families` x `--scores` (a score the installed
genaug does not offer shows "n/a"); reference mode fits once per family
(`genaug.fit`, which keeps 20% of the training images for calibration; with
`llr` among the scores, `llr=True` adds its background model, and its time)
and scores each kind with `detect_outliers(test, model=...)`; self-audit
trains the fold models once per family and data set (see `cross_fit_once`;
`llr` trains its own, with background models), and its second round once
per score (its left-out images depend on the score). Flags
are genaug's defaults: BH at fdr 0.05. PyOD (IForest, PCA, AutoEncoder, VAE,
DeepSVDD) on flattened pixels in [0, 1] at its default hyper-parameters
(`--pyod-epochs` may cut the deep ones' epochs) and its default flags:
`contamination=0.1`, i.e. the threshold at the 90th percentile of its
training scores (`predict` in reference mode, `labels_` in self-audit).

Metrics: AUROC of the scores; of the default flags, precision, recall,
realised FDR (1 - precision, 0 when nothing is flagged) and the count;
fit and score seconds (self-audit: the cross-fit, out-of-fold scoring
included, is "fit"). Several seeds are averaged. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from genaug._version import __version__ as genaug_version
from genaug.data.imageset import ImageSet
from genaug.detect import detect_outliers
from genaug.errors import GenaugError
from genaug.fit import fit
from genaug.models.registry import get_family
from genaug.scoring import resolve_score, score_values
from genaug.scoring.record import CalibrationRecord
from genaug.train import TrainConfig, resolve_device
from photo_crops import random_crops

STYLES = ("google", "twitter")
DEFAULT_NOVEL = ("Animals & Nature", "Flags")
SCORES = ("nll", "complexity", "llr", "typicality", "knn", "ensemble", "auto")
PYOD = ("IForest", "PCA", "AutoEncoder", "VAE", "DeepSVDD")
INJECT_SHARE = 0.02
STYLE_OUT_SHARE = 0.05  # outliers' share of the style task's test set
QUICK_SHARE = 0.2  # --quick keeps this share of the emoji (the same ones in both styles)
CLEAN_TARGET = 0.005
PHOTO = "photos"
PHOTO_CROP = (32, 128)  # side range of the photo crops, in source pixels, before downscaling to 32x32
TASKS = {
    "novel": "novel category (reference mode)",
    "style": "other style (reference mode)",
    "injected": f"self-audit, {INJECT_SHARE:.0%} other-style drawings injected",
    "photo": f"self-audit, {INJECT_SHARE:.0%} photo crops injected (and {INJECT_SHARE:.0%} emoji into photo crops)",
    "clean": "self-audit, nothing injected",
    "foreign": "photo crops among emoji and emoji among photo crops (reference mode)",
    "grey": f"self-audit at 28x28 grey, {INJECT_SHARE:.0%} emoji among photo crops and the reverse",
}
SCORED_TASKS = ("novel", "style", "injected", "photo", "foreign", "grey")  # the tasks with outliers: summary means
GREY_SIZE = 28  # side of task 7's grey images


@dataclass
class Emoji:
    """One style's images (uint8 [N, 3, 32, 32]) with category, emoji name; rows align across styles."""

    x: torch.Tensor
    y: np.ndarray
    names: np.ndarray
    categories: list[str]

    def imageset(self, index: np.ndarray, source: str, x: torch.Tensor | None = None) -> ImageSet:
        """The images at `index` (or `x`, images already picked for those rows) as an ImageSet."""
        images = self.x[torch.from_numpy(index)] if x is None else x
        return ImageSet(images, self.y[index], self.categories, source=source)


@dataclass
class Task:
    """One direction of one task: a training set (None in self-audit), the set scored and its truth."""

    task: str
    direction: str
    train: ImageSet | None
    test: ImageSet
    is_out: np.ndarray


def load_emoji(emoji_dir: Path, quick: bool) -> dict[str, Emoji]:
    """Both styles, NHWC -> NCHW; `quick` keeps a seeded QUICK_SHARE of the rows (the same in both)."""
    out = {}
    for style in STYLES:
        with np.load(emoji_dir / f"emoji-{style}-32.npz", allow_pickle=False) as d:
            x = torch.from_numpy(d["x"]).permute(0, 3, 1, 2).contiguous()
            out[style] = Emoji(x, d["y"].astype(np.int64), d["names"], [str(c) for c in d["categories"]])
    if not np.array_equal(out["google"].names, out["twitter"].names):
        raise SystemExit("the two emoji files do not list the same emoji in the same order")
    if quick:
        n = len(out["google"].y)
        keep = np.sort(np.random.default_rng(0).permutation(n)[: int(QUICK_SHARE * n)])
        out = {s: Emoji(e.x[torch.from_numpy(keep)], e.y[keep], e.names[keep], e.categories) for s, e in out.items()}
    return out


def photo_crops(n: int, seed: int) -> torch.Tensor:
    """[n, 3, 32, 32] uint8 random crops (sides PHOTO_CROP px, antialiased downscale) of scikit-learn's two
    sample photographs: foreign to emoji, and a second kind of real image to audit."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng([seed, 7])
    photos = [torch.from_numpy(np.array(img)).permute(2, 0, 1).float() for img in load_sample_images().images]
    return random_crops(photos, n, 32, PHOTO_CROP, rng)


def category_index(spec: str, categories: list[str]) -> int:
    """A category by index or (case-insensitive) name."""
    if spec.isdigit() and int(spec) < len(categories):
        return int(spec)
    lower = [c.lower() for c in categories]
    if spec.lower() in lower:
        return lower.index(spec.lower())
    raise SystemExit(f"--novel: no category '{spec}'; choose an index 0..{len(categories) - 1} or one of {categories}")


def split(n_or_index, rng: np.random.Generator, share: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """A random (share, 1 - share) split of the given row indices, each part sorted."""
    index = rng.permutation(n_or_index)
    cut = int(round(share * len(index)))
    return np.sort(index[:cut]), np.sort(index[cut:])


def novel_task(emoji: dict[str, Emoji], style: str, held_out: int, seed: int) -> Task:
    """Task 1: fit on 80% of the other categories of `style`; outliers: all of category `held_out`."""
    e = emoji[style]
    rng = np.random.default_rng([seed, held_out])
    train, test_in = split(np.flatnonzero(e.y != held_out), rng)
    test = np.concatenate([test_in, np.flatnonzero(e.y == held_out)])
    return Task("novel", f"{style}, out: {e.categories[held_out]}", e.imageset(train, f"{style}-train"),
                e.imageset(test, f"{style}-test"), np.arange(len(test)) >= len(test_in))


def style_task(emoji: dict[str, Emoji], inlier: str, seed: int) -> Task:
    """Task 2: fit on 80% of `inlier`; outliers: the other style, 5% of the test set."""
    outlier = STYLES[1 - STYLES.index(inlier)]
    e, f = emoji[inlier], emoji[outlier]
    rng = np.random.default_rng([seed, STYLES.index(inlier)])
    train, test_in = split(len(e.y), rng)
    n_out = int(round(STYLE_OUT_SHARE / (1 - STYLE_OUT_SHARE) * len(test_in)))
    # Drawings of emoji absent from the test inliers, so an outlier never has its twin among them.
    candidates = np.flatnonzero(~np.isin(f.names, e.names[test_in]))
    out = np.sort(rng.choice(candidates, size=min(n_out, len(candidates)), replace=False))
    x = torch.cat([e.x[torch.from_numpy(test_in)], f.x[torch.from_numpy(out)]])
    rows = np.concatenate([test_in, out])  # labels: the outliers' own categories
    return Task("style", f"in: {inlier}, out: {outlier}", e.imageset(train, f"{inlier}-train"),
                e.imageset(rows, f"{inlier}+{outlier}", x), np.arange(len(rows)) >= len(test_in))


def audit_task(emoji: dict[str, Emoji], inlier: str, seed: int, share: float) -> Task:
    """Tasks 3 and 4: all of `inlier`, `share` of it replaced by the other style (0: clean)."""
    outlier = STYLES[1 - STYLES.index(inlier)]
    e, f = emoji[inlier], emoji[outlier]
    rng = np.random.default_rng([seed, STYLES.index(inlier), int(share * 1000)])
    n = len(e.y)
    x = e.x.clone()
    is_out = np.zeros(n, dtype=bool)
    k = int(round(share * n))
    if k:
        # Rows of k different emoji; each gets the foreign drawing of the next one, whose own
        # drawing is replaced too: no foreign drawing keeps its twin in the set.
        order = rng.permutation(n)
        _, first = np.unique(e.names[order], return_index=True)
        rows = order[np.sort(first)][:k]
        x[torch.from_numpy(rows)] = f.x[torch.from_numpy(np.roll(rows, 1))]
        is_out[rows] = True
    name = "injected" if k else "clean"
    direction = f"{inlier} + {outlier}" if k else inlier
    return Task(name, direction, None, e.imageset(np.arange(n), f"{inlier}-audit", x), is_out)


def grey(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> uint8 [N, 1, GREY_SIZE, GREY_SIZE]: luminance, then an antialiased downscale."""
    from torchvision.transforms.functional import rgb_to_grayscale

    g = rgb_to_grayscale(x.float())
    g = torch.nn.functional.interpolate(g, size=(GREY_SIZE, GREY_SIZE), mode="bilinear", antialias=True,
                                        align_corners=False)  # fmt: skip
    return g.round().clamp(0, 255).to(torch.uint8)


def photo_task(emoji: dict[str, Emoji], inlier: str, style: str, seed: int, share: float,
               in_grey: bool = False) -> Task:
    """Task 4 (and its clean set): emoji of `style` with `share` photo crops, or (`inlier` = PHOTO)
    photo crops with `share` emoji of `style`; 0: the clean inlier set. `in_grey`: task 7, the
    same images in grey at GREY_SIZE."""
    e = emoji[style]
    n = len(e.y)
    photos = photo_crops(n, seed)
    rng = np.random.default_rng([seed, 11, int(share * 1000)])
    is_out = np.zeros(n, dtype=bool)
    is_out[rng.choice(n, size=int(round(share * n)), replace=False)] = True
    own, foreign = (photos, e.x) if inlier == PHOTO else (e.x, photos)
    x = torch.where(torch.from_numpy(is_out)[:, None, None, None], foreign, own)
    # Labels: the emoji's category where an emoji is shown, else one "photo" class.
    names = [*e.categories, PHOTO]
    shows_emoji = is_out if inlier == PHOTO else ~is_out
    y = np.where(shows_emoji, e.y, len(e.categories))
    other = PHOTO if inlier != PHOTO else style
    name = ("grey" if in_grey else "photo") if share else "clean"
    direction = f"{inlier} + {other}" if share else inlier
    if in_grey:
        x, direction = grey(x), f"grey {direction}"
    return Task(name, direction, None, ImageSet(x, y, names, source=f"{inlier}-audit"), is_out)


def foreign_task(emoji: dict[str, Emoji], inlier: str, style: str, seed: int) -> Task:
    """Task 6: fit on 80% of `inlier` (an emoji style or PHOTO); outliers: images of the other kind
    (photo crops, or emoji of `style`), STYLE_OUT_SHARE of the test set."""
    e = emoji[style]
    n = len(e.y)
    rng = np.random.default_rng([seed, 13, int(inlier == PHOTO)])
    own, other = (photo_crops(n, seed), e.x) if inlier == PHOTO else (e.x, photo_crops(n, seed))
    train, test_in = split(n, rng)
    n_out = int(round(STYLE_OUT_SHARE / (1 - STYLE_OUT_SHARE) * len(test_in)))
    out = np.sort(rng.choice(n, size=n_out, replace=False))
    names = [*e.categories, PHOTO]
    # Labels: the emoji's category where an emoji is shown, else one "photo" class.
    photo_y = np.full(n, len(e.categories))
    own_y, other_y = (photo_y, e.y) if inlier == PHOTO else (e.y, photo_y)
    x = torch.cat([own[torch.from_numpy(test_in)], other[torch.from_numpy(out)]])
    y = np.concatenate([own_y[test_in], other_y[out]])
    kind = PHOTO if inlier != PHOTO else style
    return Task("foreign", f"in: {inlier}, out: {kind}",
                ImageSet(own[torch.from_numpy(train)], own_y[train], names, source=f"{inlier}-train"),
                ImageSet(x, y, names, source=f"{inlier}+{kind}"), np.arange(len(y)) >= len(test_in))


def build_tasks(emoji: dict[str, Emoji], novel: list[int], seed: int, which: list[str]) -> list[Task]:
    """Every direction of every task in `which` for one seed, in table order."""
    tasks = []
    if "novel" in which:
        tasks += [novel_task(emoji, s, c, seed) for c in novel for s in STYLES]
    if "style" in which:
        tasks += [style_task(emoji, s, seed) for s in STYLES]
    if "injected" in which:
        tasks += [audit_task(emoji, s, seed, INJECT_SHARE) for s in STYLES]
    if "photo" in which:
        tasks += [photo_task(emoji, "google", "google", seed, INJECT_SHARE),
                  photo_task(emoji, PHOTO, "google", seed, INJECT_SHARE)]
    if "foreign" in which:
        tasks += [foreign_task(emoji, "google", "google", seed), foreign_task(emoji, PHOTO, "google", seed)]
    if "grey" in which:
        tasks += [photo_task(emoji, "google", "google", seed, INJECT_SHARE, in_grey=True),
                  photo_task(emoji, PHOTO, "google", seed, INJECT_SHARE, in_grey=True)]
    if "clean" in which:
        tasks += [audit_task(emoji, s, seed, 0.0) for s in STYLES]
        if "photo" in which:
            tasks.append(photo_task(emoji, PHOTO, "google", seed, 0.0))
        if "grey" in which:
            tasks.append(photo_task(emoji, PHOTO, "google", seed, 0.0, in_grey=True))
    return tasks


def metrics(is_out: np.ndarray, score: np.ndarray, flags: np.ndarray) -> dict:
    """AUROC of `score` (nan without both classes) and the default flags' precision, recall, FDR."""
    flags = np.asarray(flags, dtype=bool)
    n_flag, hits = int(flags.sum()), int((flags & is_out).sum())
    both = 0 < is_out.sum() < len(is_out)
    return {
        "AUROC": roc_auc_score(is_out, score) if both else np.nan,
        "precision": hits / n_flag if n_flag else np.nan,
        "recall": hits / is_out.sum() if is_out.any() else np.nan,
        "FDR": 1 - hits / n_flag if n_flag else 0.0,
        "flagged": n_flag,
        "flagged share": n_flag / len(is_out),
    }


def log(message: str) -> None:
    """A timestamped progress line on stderr (stdout holds only the tables)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- genaug ------------------------------------------------------------------


@contextmanager
def cross_fit_once():
    """Within the block, self-audit `detect_outliers` calls on the same data and settings train
    their fold models once: later calls reuse the first call's out-of-fold raw scores.

    NOTE: patching the name `detect_outliers` looks up (not copying its flag rule) keeps each
    score's flags exactly those a user gets, whatever genaug's self-audit flagging becomes.
    The call's arguments are the cache key, so a score needing other fold models retrains;
    should `detect_outliers` stop calling `cross_fit_scores`, every score retrains: slower, still right.
    Yields a dict: "seconds" sums the time spent cross-fitting, "used" lists the time each
    cross-fit whose scores a call used took when it ran (one per round of a self-audit).
    """
    module = import_module("genaug.detect")
    original = module.cross_fit_scores
    cache: dict = {}
    timer = {"seconds": 0.0, "used": []}

    def cached(data, *args, **kwargs):
        # An array (the second round's `exclude` mask) goes in whole: repr() elides long ones.
        key = (id(data), repr(args), repr(sorted((k, v.tobytes() if isinstance(v, np.ndarray) else v)
                                                 for k, v in kwargs.items())))
        if key not in cache:
            start = time.perf_counter()
            raw = original(data, *args, **kwargs)
            cache[key] = raw, time.perf_counter() - start
            timer["seconds"] += cache[key][1]
        raw, seconds = cache[key]
        timer["used"].append(seconds)
        return raw

    module.cross_fit_scores = cached
    try:
        yield timer
    finally:
        module.cross_fit_scores = original


# --save-scores: "seed|task|direction|method|scored" (and "|calibration" in reference mode) -> scores,
# "seed|task|direction|is_out" -> truth; for choosing among score combinations offline on the same runs.
SAVED: dict[str, np.ndarray] = {}


def genaug_rows(task: Task, family: str, scores: list[str], config: TrainConfig) -> dict[str, dict]:
    """Method name -> metrics for every score of `family` on `task`, in `scores` order; a score
    the installed genaug does not offer gets an "n/a" row."""
    prefix = f"{config.seed}|{task.task}|{task.direction}"
    SAVED[f"{prefix}|is_out"] = task.is_out
    cls = get_family(family)
    offered = {}
    for kind in scores:
        try:
            offered[kind] = resolve_score(kind, cls)
        except GenaugError:
            offered[kind] = None
    model, fit_s = None, 0.0
    if task.train is not None and any(offered.values()):
        # `llr` needs a background model trained at fit time (`fit(..., llr=True)`; the main model is the
        # same either way): "fit s" then includes it for every score of the family.
        start = time.perf_counter()
        llr = {"llr": True} if "llr" in offered.values() else {}
        model = fit(task.train, family=family, train_config=config, **llr)
        fit_s = time.perf_counter() - start
        for kind, concrete in offered.items():  # a fitted model may offer less than its family
            try:
                offered[kind] = concrete and resolve_score(kind, model)
            except GenaugError:
                offered[kind] = None
    rows, warned = {}, set()
    with cross_fit_once() as cross_fit:
        for kind, concrete in offered.items():
            name = f"{family}/{kind}" + (f" (={concrete})" if concrete not in (None, kind) else "")
            if concrete is None:
                rows[name] = {"n/a": True}
                continue
            start, fitting, used = time.perf_counter(), cross_fit["seconds"], len(cross_fit["used"])
            if model is not None:
                result = detect_outliers(task.test, model=model, score=kind)
            else:
                result = detect_outliers(task.test, family=family, score=kind, train_config=config)
                fit_s = sum(cross_fit["used"][used:])  # both rounds, whichever call trained them
            fitted = cross_fit["seconds"] - fitting  # 0 unless this call trained the fold models
            for w in result.warnings:
                if w not in warned:  # the same warning for every score of one model: once is enough
                    warned.add(w)
                    log(f"  genaug warning ({family}): {w}")
            SAVED[f"{prefix}|{family}/{kind}|scored"] = result.score
            if result.rarity is not None:  # feature-space rarity: a candidate score, compared offline
                SAVED[f"{prefix}|{family}/{kind}|rarity"] = result.rarity
            if model is not None:
                record = CalibrationRecord.of(model).scores
                SAVED[f"{prefix}|{family}/{kind}|calibration"] = score_values(record, concrete, record)
            rows[name] = {**metrics(task.is_out, result.score, result.is_outlier),
                          "flag rule": result.settings["flag_rule"], "fit s": fit_s,
                          "score s": time.perf_counter() - start - fitted}
            log(f"  {name}: AUROC {rows[name]['AUROC']:.3f}, flagged {rows[name]['flagged']}")
    return rows


# --- PyOD --------------------------------------------------------------------


def pyod_detector(name: str, n_features: int, epochs: int | None, seed: int):
    """A PyOD detector at its defaults (contamination 0.1), seeded, quiet; `epochs` for the deep ones."""
    from pyod.models.auto_encoder import AutoEncoder
    from pyod.models.deep_svdd import DeepSVDD
    from pyod.models.iforest import IForest
    from pyod.models.pca import PCA
    from pyod.models.vae import VAE

    epoch_num = {} if epochs is None else {"epoch_num": epochs}
    if name == "IForest":
        return IForest(random_state=seed)
    if name == "PCA":
        return PCA(random_state=seed)
    if name == "AutoEncoder":
        return AutoEncoder(random_state=seed, verbose=0, **epoch_num)
    if name == "VAE":
        return VAE(random_state=seed, verbose=0, **epoch_num)
    if name == "DeepSVDD":
        return DeepSVDD(n_features=n_features, random_state=seed, verbose=0,
                        **({} if epochs is None else {"epochs": epochs}))
    raise SystemExit(f"unknown PyOD detector {name}")


def flat(data: ImageSet) -> np.ndarray:
    """Flattened pixels in [0, 1], float32 [N, C*H*W]: what PyOD's detectors take."""
    return data.images.reshape(len(data), -1).numpy().astype(np.float32) / 255.0


def pyod_row(task: Task, name: str, epochs: int | None, seed: int) -> dict:
    """Metrics of PyOD's `name` on `task`: fit on the training set, or on the scored set in self-audit."""
    x_test = flat(task.test)
    det = pyod_detector(name, x_test.shape[1], epochs, seed)
    start = time.perf_counter()
    det.fit(flat(task.train) if task.train is not None else x_test)
    fit_s = time.perf_counter() - start
    if task.train is not None:
        start = time.perf_counter()
        score = det.decision_function(x_test)
        score_s = time.perf_counter() - start
        flags = det.predict(x_test)
    else:  # self-audit: the training scores and labels are the answer
        score, flags, score_s = det.decision_scores_, det.labels_, "in fit"
    row = {**metrics(task.is_out, score, flags), "flag rule": f"contamination {det.contamination} (default)",
           "fit s": fit_s, "score s": score_s}
    log(f"  {name}: AUROC {row['AUROC']:.3f}, flagged {row['flagged']}")
    return row


# --- tables ------------------------------------------------------------------


def mean_of(rows: list[dict], key: str):
    """Mean over seeds (nan-aware); strings (a rule, "in fit") are taken from the first seed."""
    values = [r[key] for r in rows]
    if isinstance(values[0], str):
        return values[0]
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else "-"


def task_table(runs: dict[str, list[dict]], clean: bool) -> list[dict]:
    """Rows of one task direction: one per method, averaged over seeds."""
    keys = (["flagged", "flagged share", "FDR", "flag rule", "fit s", "score s"] if clean else
            ["AUROC", "precision", "recall", "FDR", "flagged", "flag rule", "fit s", "score s"])
    table = []
    for method, rows in runs.items():
        if rows[0].get("n/a"):
            table.append({"method": method, **{k: "n/a" for k in keys}})
            continue
        row = {"method": method, **{k: mean_of(rows, k) for k in keys}}
        if len(rows) > 1 and not clean:
            row["AUROC sd"] = float(np.std([r["AUROC"] for r in rows]))
        if clean and not method.startswith(PYOD):
            row[f"<= {CLEAN_TARGET:.1%}"] = "yes" if row["flagged share"] <= CLEAN_TARGET else "NO"
        table.append(row)
    return table


def summary_table(results: dict, methods: list[str]) -> list[dict]:
    """Mean AUROC per method over every scored direction (tasks 1-4, 6 and 7), per task, and the clean share."""
    table = []
    for method in methods:
        row: dict = {"method": method}
        every = []
        for task in SCORED_TASKS:
            aurocs = [r["AUROC"] for (t, _), runs in results.items() if t == task for r in runs.get(method, [])
                      if not r.get("n/a")]
            row[f"AUROC {task}"] = float(np.mean(aurocs)) if aurocs else "n/a"
            every += aurocs
        row["mean AUROC"] = float(np.mean(every)) if every else "n/a"
        shares = [r["flagged share"] for (t, _), runs in results.items() if t == "clean"
                  for r in runs.get(method, []) if not r.get("n/a")]
        row["clean flagged share"] = float(np.mean(shares)) if shares else "n/a"
        table.append(row)
    pyod_best = max((r["mean AUROC"] for r in table if r["method"] in PYOD and r["mean AUROC"] != "n/a"), default=None)
    for row in table:
        if "/auto" in row["method"]:
            row["beats every PyOD"] = ("n/a" if pyod_best is None or row["mean AUROC"] == "n/a"
                                       else "yes" if row["mean AUROC"] > pyod_best else "no")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emoji-dir", type=Path, required=True,
                        help="folder with emoji-google-32.npz and emoji-twitter-32.npz")
    parser.add_argument("--novel", nargs="+", default=list(DEFAULT_NOVEL),
                        help=f"held-out categories for task 1, by name or index (default: {', '.join(DEFAULT_NOVEL)})")
    parser.add_argument("--families", nargs="+", default=["vae", "pixelcnn"])
    parser.add_argument("--scores", nargs="+", default=list(SCORES))
    parser.add_argument("--pyod", nargs="+", default=list(PYOD), choices=PYOD)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS),
                        help="which tasks to run (default: all)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1, averaged (default 1)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="start the seeds here (seeds F..F+N-1), to add seeds to an earlier run")
    parser.add_argument("--time-limit", type=float, default=1.0, help="training minutes per genaug model (default 1)")
    parser.add_argument("--epochs", type=int, help="genaug epoch cap (default: genaug's automatic choice)")
    parser.add_argument("--pyod-epochs", type=int, help="epochs of PyOD's deep detectors (default: PyOD's)")
    parser.add_argument("--device", default="auto", help="genaug's training device")
    parser.add_argument("--save-scores", type=Path, help="write every genaug score array (and the truth) to this .npz")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_SHARE * 100:.0f}%% of the emoji, "
                             "2 epochs for genaug and PyOD unless given")
    args = parser.parse_args()
    if args.quick:
        args.epochs = args.epochs or 2
        args.pyod_epochs = args.pyod_epochs or 2

    from importlib.metadata import version

    from tables import print_table

    emoji = load_emoji(args.emoji_dir, args.quick)
    categories = emoji["google"].categories
    novel = [category_index(c, categories) for c in args.novel]
    for family in args.families:
        try:
            get_family(family)
        except GenaugError as e:
            raise SystemExit(f"--families: {e}") from None
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# genaug {genaug_version}, PyOD {version('pyod')}, torch {torch.__version__}, device {device} ({name}), "
          f"{torch.get_num_threads()} torch threads")
    held_out = ", ".join(f"{categories[c]} ({(emoji['google'].y == c).sum()} images)" for c in novel)
    print(f"# {len(emoji['google'].y)} emoji per style{' (--quick subset)' if args.quick else ''}; "
          f"novel categories: {held_out}; "
          f"genaug time limit {args.time_limit} min per model, epochs {args.epochs or 'auto'}; "
          f"PyOD deep epochs {args.pyod_epochs or 'default'}; seeds {args.first_seed}..{args.first_seed + args.seeds - 1}\n")

    started = time.perf_counter()
    results: dict[tuple[str, str], dict[str, list[dict]]] = {}
    sizes: dict[tuple[str, str], tuple[int, int, int]] = {}
    methods: list[str] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        config = TrainConfig(epochs=args.epochs, time_limit=args.time_limit, device=args.device, seed=seed,
                             progress=False)
        for task in build_tasks(emoji, novel, seed, args.tasks):
            n_out = int(task.is_out.sum())
            log(f"seed {seed}, {task.task}: {task.direction} ({len(task.test)} scored, {n_out} outliers)")
            runs = results.setdefault((task.task, task.direction), {})
            sizes[(task.task, task.direction)] = (len(task.train) if task.train else 0, len(task.test), n_out)
            for family in args.families:
                for method, row in genaug_rows(task, family, args.scores, config).items():
                    runs.setdefault(method, []).append(row)
            for detector in args.pyod:
                runs.setdefault(detector, []).append(pyod_row(task, detector, args.pyod_epochs, seed))
            methods += [m for m in runs if m not in methods]
            if args.save_scores:  # after every task: a long run stopped early keeps what it measured
                np.savez_compressed(args.save_scores, **SAVED)

    for key, title in TASKS.items():
        print(f"## {title}\n")
        for (task, direction), runs in results.items():
            if task == key:
                n_train, n_test, n_out = sizes[(task, direction)]
                fitted_on = f"fit on {n_train}, " if n_train else ""
                print(f"### {direction} ({fitted_on}{n_test} scored, {n_out} outliers)\n")
                print_table(task_table(runs, clean=task == "clean"))
                print()
    print("## summary: mean AUROC over every direction of tasks 1-4, 6 and 7; clean: mean share flagged\n")
    print_table(summary_table(results, methods))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
