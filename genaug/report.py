"""The HTML report: one self-contained page summarising a detect-outliers output.

The page shows the flagged images (and, when the output has a `category`
column, the edge cases) as a grid with their scores and p-values, the score
histogram with the threshold marked, flagged / total per class, and the
settings from the file's `genaug` metadata.

It is one file that works offline and forever: images are inlined as
`data:` URIs, the histogram is inline SVG, and there is no script. Every
user string (ids, file names, labels, class names, settings) is escaped
with `html.escape`, and a Content-Security-Policy allows nothing but inline
styles and `data:` images, so even a string that slipped past the escaping
could neither run nor load anything.

NOTE: the Parquet file is read with pyarrow alone, not through
`genaug.data.parquet` (which imports torch): `genaug report` needs no model,
and starts in a tenth of the time without it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genaug.parquet_meta import genaug_metadata
from genaug._version import __version__
from genaug.atomic import check_output, clean_stale, commit, temp_path
from genaug.errors import GenaugError, first_line
from genaug.terminal import inert

# Images per grid: every flagged image up to this many, the rest counted.
MAX_IMAGES = 500
# With nothing flagged, the highest scores are shown instead, this many.
TOP_WHEN_NONE_FLAGGED = 20
# Images over this many bytes are inlined as a thumbnail of at most
# THUMBNAIL_PIXELS a side: 500 full-size photos would make a 50 MB page.
INLINE_MAX_BYTES = 16 * 1024
THUMBNAIL_PIXELS = 160
HISTOGRAM_MAX_BINS = 40
# A settings value longer than this is cut (a model path, a long command line).
SETTING_MAX_CHARS = 400
REQUIRED_COLUMNS = ("id", "image", "score", "p_value", "is_outlier", "rank")
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
# Image types a browser shows from a data: URI; anything else is re-encoded.
_MIME = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}


@dataclass
class Report:
    """A rendered page and the counts it shows."""

    html: str
    n_images: int
    n_flagged: int
    n_shown: int  # flagged images on the page (at most max_images)
    threshold: float | None  # the lowest flagged score; None when nothing is flagged

    def write(self, path: str | os.PathLike) -> Path:
        """Write the page to `path` atomically (a temp file beside it, then a rename); returns the path."""
        path = check_output(path)
        clean_stale(path)
        tmp = temp_path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(self.html.encode("utf-8"))
            commit(tmp, path)
        except OSError as e:
            raise GenaugError(f"cannot write {path}: {e.strerror or first_line(e)}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return path


def build_report(
    scores: str | os.PathLike | pa.Table,
    *,
    settings: dict | None = None,
    class_names: list[str] | None = None,
    title: str | None = None,
    max_images: int = MAX_IMAGES,
) -> Report:
    """The report of a detect-outliers output: a Parquet path or the table itself.

    `settings` (what `DetectionResult.settings` holds) and `class_names`
    default to the `genaug` and `huggingface` schema metadata of the file
    or table; a table fresh from `DetectionResult.table()` has none, so
    pass them. At most `max_images` images per grid; the page says how many
    more were flagged.
    """
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise GenaugError(f"max_images must be a positive integer, got {max_images!r}")
    data = _Scores.open(scores, settings, class_names)
    return _render(data, title, max_images)


def report_html(scores: str | os.PathLike | pa.Table, **options) -> str:
    """The HTML page of `build_report(scores, **options)`."""
    return build_report(scores, **options).html


def write_report(
    scores: str | os.PathLike | pa.Table,
    path: str | os.PathLike,
    *,
    settings: dict | None = None,
    class_names: list[str] | None = None,
    title: str | None = None,
    max_images: int = MAX_IMAGES,
) -> Report:
    """Build the report of `scores` (see `build_report`) and write it to `path` atomically.

    `path` is refused before any work when it is the input file, or is not
    a regular file or a new name.
    """
    source = None if isinstance(scores, pa.Table) else scores
    check_output(path, [("the scores file", source)])
    report = build_report(scores, settings=settings, class_names=class_names, title=title, max_images=max_images)
    report.write(path)
    return report


# -- reading ----------------------------------------------------------------
@dataclass
class _Scores:
    """The columns the page needs, as numpy / Python values; images are fetched per row on demand."""

    table: pa.Table  # every column but `image`
    source: str  # the file name, or "table"
    path: Path | None  # the Parquet file, None for an in-memory table
    image_column: pa.ChunkedArray | None  # the in-memory table's images
    settings: dict
    class_names: list[str] | None

    @classmethod
    def open(cls, scores, settings: dict | None, class_names: list[str] | None) -> _Scores:
        if isinstance(scores, pa.Table):
            path, source, schema = None, "table", scores.schema
        else:
            path = Path(scores)
            source = str(path)
            if not path.exists():
                raise GenaugError(f"{path} does not exist")
            if path.is_dir():
                raise GenaugError(f"{path} is a folder; give the Parquet file detect-outliers wrote")
            try:
                schema = pq.read_schema(path)
            except (OSError, pa.ArrowException) as e:
                raise GenaugError(f"cannot read Parquet file {path}: {first_line(e)}") from None
        meta = schema.metadata or {}
        if settings is None:
            settings = _genaug_metadata(meta, source)
        job = settings.get("job")
        if job not in (None, "detect-outliers"):
            raise GenaugError(f"{source} is a {job} output, not a detect-outliers output")
        _check_schema(schema, source)
        if class_names is None:
            class_names = _class_names(meta)
        columns = [n for n in schema.names if n != "image"]
        if path is None:
            table, images = scores.select(columns), scores.column("image")
        else:
            try:
                table, images = pq.read_table(path, columns=columns), None
            except (OSError, pa.ArrowException) as e:
                raise GenaugError(f"cannot read Parquet file {path}: {first_line(e)}") from None
        if table.num_rows == 0:
            raise GenaugError(f"{source} has no rows")
        return cls(table, source, path, images, dict(settings), class_names)

    def column(self, name: str) -> np.ndarray | None:
        """Column `name` as a numpy array (floats with NaN for null, objects otherwise); None if absent."""
        if name not in self.table.column_names:
            return None
        col = self.table.column(name)
        if pa.types.is_floating(col.type) or (pa.types.is_integer(col.type) and name != "label"):
            return col.to_numpy().astype(float) if col.null_count == 0 else np.array(col.to_pylist(), dtype=float)
        return np.array(col.to_pylist(), dtype=object)

    def images(self, rows: list[int]) -> dict[int, dict]:
        """`{row: {"bytes": ..., "path": ...}}` of the image struct at each row (values may be None)."""
        if not rows:
            return {}
        if self.image_column is not None:
            return dict(zip(rows, self.image_column.take(pa.array(rows, pa.int64())).to_pylist()))
        # Streamed, and only the row groups holding a wanted row: a large
        # output's image column may not fit in memory.
        wanted = np.unique(rows)
        found: dict[int, dict] = {}
        try:
            parquet = pq.ParquetFile(self.path)
            starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
            for g in range(parquet.num_row_groups):
                inside = wanted[(wanted >= starts[g]) & (wanted < starts[g + 1])]
                if len(inside):
                    column = parquet.read_row_group(g, columns=["image"]).column(0)
                    found.update(zip(inside.tolist(), column.take(pa.array(inside - starts[g])).to_pylist()))
        except (OSError, pa.ArrowException) as e:
            raise GenaugError(f"cannot read the images of {self.path}: {first_line(e)}") from None
        return found


def _genaug_metadata(meta: dict, source: str) -> dict:
    settings = genaug_metadata(meta, source)
    if not isinstance(settings, dict):
        raise GenaugError(f"{source} has unreadable genaug metadata (not a JSON object)")
    return settings


def _check_schema(schema: pa.Schema, source: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        names = ", ".join(f"'{c}'" for c in missing)
        raise GenaugError(f"{source} is not a detect-outliers output: it has no column {names}")
    kinds = {
        "score": pa.types.is_floating,
        "p_value": pa.types.is_floating,
        "is_outlier": pa.types.is_boolean,
        "rank": pa.types.is_integer,
        "image": lambda t: pa.types.is_struct(t) and t.get_field_index("bytes") >= 0,
    }
    for name, ok in kinds.items():
        t = schema.field(name).type
        if not ok(t):
            raise GenaugError(f"{source} is not a detect-outliers output: column '{name}' is {t}")


def _class_names(meta: dict) -> list[str] | None:
    """Names of a `ClassLabel` label feature in the `huggingface` metadata, as genaug writes it."""
    try:
        feature = json.loads(meta[b"huggingface"])["info"]["features"]["label"]
    except (KeyError, TypeError, ValueError, RecursionError):
        return None
    names = feature.get("names") if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" else None
    return [str(n) for n in names] if isinstance(names, list) else None


# -- rendering --------------------------------------------------------------
def _text(value: object) -> str:
    """User text as HTML text or an attribute value: escaped, with control, bidi and lone surrogate
    characters written as visible escapes (as in the terminal)."""
    return html.escape(inert(value), quote=True)


def _render(data: _Scores, title: str | None, max_images: int) -> Report:
    n = data.table.num_rows
    score = data.column("score")
    flagged = np.array([bool(v) for v in data.column("is_outlier")])
    rank = data.column("rank")
    # Rank 1 first; a missing rank sorts last, by score.
    order = np.lexsort((-np.nan_to_num(score, nan=-np.inf), np.nan_to_num(rank, nan=np.inf)))
    flagged_rows = [int(i) for i in order if flagged[i]]
    finite_flagged = score[flagged & np.isfinite(score)]
    threshold = float(finite_flagged.min()) if len(finite_flagged) else None

    category = data.column("category")
    edge_rows: list[int] = []
    if category is not None:
        rarity = data.column("rarity")
        key = rarity if rarity is not None else score
        edge = np.flatnonzero(category == "edge-case")
        # Rarest (highest rarity) first; a missing rarity last.
        edge_rows = [int(i) for i in edge[np.argsort(-np.nan_to_num(key[edge], nan=-np.inf), kind="stable")]]
    top_rows = [] if flagged_rows else [int(i) for i in order[:TOP_WHEN_NONE_FLAGGED]]

    images = data.images(flagged_rows[:max_images] + edge_rows[:max_images] + top_rows)
    labels = _labels(data)
    caption = _Caption(data, labels)

    def grid(anchor: str, heading: str, rows: list[int], empty: str, note: str = "") -> str:
        notes = [note] if note else []
        if len(rows) > max_images:
            notes.append(
                f"Showing the first {max_images:,} of {len(rows):,}; {len(rows) - max_images:,} not shown "
                "(raise --max-images to see more)."
            )
        tiles = "".join(_tile(i, images.get(i), caption) for i in rows[:max_images])
        body = f'<div class="grid">{tiles}</div>' if tiles else f"<p>{empty}</p>"
        notes_html = "".join(f'<p class="note">{n}</p>' for n in notes)
        return f'<section id="{anchor}"><h2>{heading}</h2>{notes_html}{body}</section>'

    settings = data.settings
    if title is None:
        title = "genaug report" if data.path is None else f"genaug report: {data.path.name}"
    rule = settings.get("flag_rule", "the file's is_outlier column")
    facts = [f"{k} {_text(settings[k])}" for k in ("mode", "model", "score") if settings.get(k) not in (None, "")]
    parts = [
        f"<header><h1>{_text(title)}</h1>",
        f'<p class="summary"><strong>{len(flagged_rows):,}</strong> of {n:,} images flagged ({_text(rule)})'
        + "".join(f" · {f}" for f in facts)
        + "</p></header>",
        _histogram_section(score, flagged, threshold),
        grid("outliers", f"Flagged outliers ({len(flagged_rows):,})", flagged_rows, "No image is flagged."),
    ]
    if category is not None:
        heading, note = f"Edge cases ({len(edge_rows):,})", "Rare but not flagged, rarest first."
        parts.append(grid("edge-cases", heading, edge_rows, "No image is an edge case.", note))
    if top_rows:
        parts.append(grid("top-scores", f"Highest scores (none flagged; top {len(top_rows)})", top_rows, ""))
    parts.append(_class_section(labels, flagged, category))
    parts.append(_settings_section(settings))
    parts.append(f"<footer>Written by genaug {_text(__version__)} from {_text(data.source)}.</footer>")
    page = _page(title, "\n".join(parts))
    return Report(page, n, len(flagged_rows), min(len(flagged_rows), max_images), threshold)


def _labels(data: _Scores) -> tuple[list, list[str | None]] | None:
    """Each row's label and its class as text (the class name when the file has names; None for a
    null label); None when the file has no labels."""
    values = data.column("label")
    if values is None or all(v is None for v in values):
        return None
    names = data.class_names or []

    def name(v):
        if v is None:
            return None
        if isinstance(v, (int, np.integer)) and 0 <= v < len(names):
            return names[v]
        return str(v)

    return list(values), [name(v) for v in values]


class _Caption:
    """The caption of one image tile: rank and id, class, score, p-value, bits/dim, rarity."""

    def __init__(self, data: _Scores, labels: tuple[list, list[str | None]] | None):
        self.ids = data.column("id")
        self.rank, self.score, self.p = data.column("rank"), data.column("score"), data.column("p_value")
        self.bpd, self.rarity = data.column("bits_per_dim"), data.column("rarity")
        self.labels = None if labels is None else labels[1]

    def __call__(self, i: int) -> str:
        ident = "(no id)" if self.ids[i] is None else self.ids[i]
        rank = "" if math.isnan(self.rank[i]) else f"#{int(self.rank[i])} "
        lines = [f'<span class="rank">{rank}</span><span class="id">{_text(ident)}</span>']
        if self.labels is not None:
            label = self.labels[i]
            lines.append(f'<span class="label">{"no label" if label is None else "class " + _text(label)}</span>')
        # Non-breaking spaces: a tile's line breaks only between numbers.
        numbers = [f"score&nbsp;{_num(self.score[i], '.4g')}", f"p&nbsp;{_num(self.p[i], '.2g')}"]
        if self.bpd is not None and not math.isnan(self.bpd[i]):
            numbers.append(f"{self.bpd[i]:.3f}&nbsp;bits/dim")
        if self.rarity is not None and not math.isnan(self.rarity[i]):
            numbers.append(f"rarity&nbsp;{self.rarity[i]:.3g}")
        lines.append(f'<span class="numbers">{" · ".join(numbers)}</span>')
        return "<br>".join(lines)


def _num(value: float, spec: str) -> str:
    return "–" if value is None or math.isnan(value) else format(value, spec)


def _tile(i: int, image: dict | None, caption: _Caption) -> str:
    image = image or {}
    uri = _data_uri(image.get("bytes"))
    path = image.get("path")
    hover = f' title="{_text(path)}"' if path else ""
    ident = caption.ids[i]
    if uri is None:
        picture = '<div class="missing">image unreadable</div>'
    else:
        picture = f'<img src="{uri}" alt="{_text("" if ident is None else ident)}"{hover}>'
    return f'<figure class="tile" data-row="{i}">{picture}<figcaption>{caption(i)}</figcaption></figure>'


def _data_uri(data: bytes | None) -> str | None:
    """A `data:` URI of the image bytes, shrunk to a thumbnail when large; None if they do not decode.

    Every image is decoded here, so a corrupt one is a placeholder tile on
    the page rather than a broken image icon.
    """
    if not data:
        return None
    from PIL import Image

    mime = next((m for sig, m in _MIME.items() if data.startswith(sig)), None)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if mime is not None and len(data) <= INLINE_MAX_BYTES:
                im.load()
                return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
            im.draft("RGB", (THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))  # JPEG: decode at a fraction of the size
            im.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
            if im.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            buffer = io.BytesIO()
            im.save(buffer, format="PNG")
    except Exception:  # any undecodable image is a placeholder tile, not a failed report
        return None
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _histogram_section(score: np.ndarray, flagged: np.ndarray, threshold: float | None) -> str:
    finite = np.isfinite(score)
    parts = ['<section id="histogram"><h2>Scores</h2>']
    if finite.any():
        parts.append(_histogram_svg(score[finite], flagged[finite], threshold))
    else:
        parts.append("<p>No finite score to plot.</p>")
    if threshold is None:
        parts.append('<p class="threshold-note">No image is flagged, so there is no threshold to mark.</p>')
    else:
        parts.append(
            f'<p class="threshold-note">Threshold (dashed line): {threshold:.4g}, the lowest score among the '
            f"{int(flagged.sum()):,} flagged images. Flagged images are red.</p>"
        )
    if (~finite).any():
        parts.append(f"<p>{int((~finite).sum()):,} images have no finite score and are not plotted.</p>")
    parts.append("</section>")
    return "".join(parts)


def _histogram_svg(score: np.ndarray, flagged: np.ndarray, threshold: float | None) -> str:
    """Bars of all scores, the flagged part of each bar in red, and the threshold as a dashed line."""
    width, height, left, right, top, bottom = 720, 260, 56, 16, 24, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    bins = int(min(HISTOGRAM_MAX_BINS, max(5, math.ceil(math.sqrt(len(score))))))
    edges = np.histogram_bin_edges(score, bins=bins)
    counts, _ = np.histogram(score, edges)
    red, _ = np.histogram(score[flagged], edges)
    lo, hi = float(edges[0]), float(edges[-1])
    peak = max(int(counts.max()), 1)

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    def h(c: int) -> float:
        return 0.0 if c == 0 else max(1.5, c / peak * plot_h)  # a single image stays visible

    base = top + plot_h
    out = [
        f'<svg class="histogram" role="img" aria-label="score histogram" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for k in range(bins):
        x0, bar_w = x(edges[k]), max(plot_w / bins - 1, 0.5)
        total, bad = int(counts[k]), int(red[k])
        tip = f"{edges[k]:.4g} to {edges[k + 1]:.4g}: {total:,} images, {bad:,} flagged"
        out.append(
            f'<g class="bar" data-from="{float(edges[k])!r}" data-to="{float(edges[k + 1])!r}"><title>{tip}</title>'
            f'<rect class="all" x="{x0:.2f}" y="{base - h(total):.2f}" width="{bar_w:.2f}" height="{h(total):.2f}"/>'
            f'<rect class="flagged" x="{x0:.2f}" y="{base - h(bad):.2f}" width="{bar_w:.2f}" '
            f'height="{h(bad):.2f}"/></g>'
        )
    out.append(f'<line class="axis" x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}"/>')
    out.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{base}"/>')
    for v in np.linspace(lo, hi, 5):
        out.append(f'<text class="tick" x="{x(v):.2f}" y="{base + 16}" text-anchor="middle">{v:.3g}</text>')
    out.append(f'<text class="tick" x="{left - 6}" y="{top + 4}" text-anchor="end">{peak:,}</text>')
    out.append(f'<text class="tick" x="{left - 6}" y="{base}" text-anchor="end">0</text>')
    out.append(
        f'<text class="axis-label" x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">'
        "score (higher = more anomalous)</text>"
    )
    mid = top + plot_h / 2
    out.append(
        f'<text class="axis-label" x="14" y="{mid}" transform="rotate(-90 14 {mid})" text-anchor="middle">images</text>'
    )
    if threshold is not None:
        tx = x(threshold)
        anchor = "start" if tx < left + plot_w / 3 else "end"  # the label stays inside the picture
        out.append(
            f'<line class="threshold" data-score="{threshold!r}" x1="{tx:.2f}" y1="{top - 8}" x2="{tx:.2f}" '
            f'y2="{base}"/><text class="threshold-label" x="{tx:.2f}" y="{top - 10}" text-anchor="{anchor}">'
            f"threshold {threshold:.4g}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _class_section(
    labels: tuple[list, list[str | None]] | None, flagged: np.ndarray, category: np.ndarray | None
) -> str:
    if labels is None:
        return '<section id="classes"><h2>Per class</h2><p>The file has no labels.</p></section>'
    values, names = labels
    counts: dict[object, list] = {}  # label -> [name, total, flagged, edge cases]
    for i, value in enumerate(values):
        row = counts.setdefault(value, [names[i], 0, 0, 0])
        row[1] += 1
        row[2] += bool(flagged[i])
        row[3] += category is not None and category[i] == "edge-case"
    edge = category is not None
    head = "<tr><th>class</th><th>flagged</th><th>total</th><th>share flagged</th>"
    head += "<th>edge cases</th></tr>" if edge else "</tr>"
    rows = []
    # By label (class index), rows without a label last.
    for value in sorted(counts, key=lambda v: (v is None, 0 if v is None else v)):
        name, total, bad, rare = counts[value]
        rows.append(
            f'<tr><td class="class">{_text("(no label)" if name is None else name)}</td>'
            f'<td class="flagged">{bad:,}</td><td class="total">{total:,}</td><td>{bad / total:.1%}</td>'
            + (f'<td class="edge">{rare:,}</td>' if edge else "")
            + "</tr>"
        )
    return f'<section id="classes"><h2>Per class</h2><table>{head}{"".join(rows)}</table></section>'


def _settings_section(settings: dict) -> str:
    if not settings:
        return '<section id="settings"><h2>Settings</h2><p>The file records no genaug settings.</p></section>'
    rows = []
    for key, value in settings.items():
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) > SETTING_MAX_CHARS:
            text = f"{text[:SETTING_MAX_CHARS]}... ({len(text):,} characters)"
        rows.append(f'<tr><th>{_text(key)}</th><td>{_text(text)}</td></tr>')
    return f'<section id="settings"><h2>Settings</h2><table>{"".join(rows)}</table></section>'


def _page(title: str, body: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_text(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
h1 {{ font-size: 1.4rem; overflow-wrap: anywhere; }}
h2 {{ font-size: 1.1rem; margin-top: 2rem; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 0.75rem; }}
.tile {{ margin: 0; width: 132px; font-size: 0.72rem; line-height: 1.3; }}
.tile img, .tile .missing {{ width: 128px; height: 128px; object-fit: contain; background: #eee;
  image-rendering: pixelated; display: block; }}
.tile .missing {{ display: flex; align-items: center; justify-content: center; color: #777; }}
.tile .id, .tile .label {{ overflow-wrap: anywhere; }}
.tile .label {{ color: #555; }}
.note, .threshold-note {{ color: #555; }}
table {{ border-collapse: collapse; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.2rem 0.6rem; text-align: left; vertical-align: top; }}
#settings td {{ overflow-wrap: anywhere; font-family: ui-monospace, monospace; font-size: 0.85rem; }}
svg.histogram {{ max-width: 100%; height: auto; font-size: 11px; }}
.bar .all {{ fill: #9aa7b8; }} .bar .flagged {{ fill: #d33; }}
.axis {{ stroke: #444; }} .threshold {{ stroke: #d33; stroke-width: 1.5; stroke-dasharray: 5 3; }}
.threshold-label {{ fill: #d33; }}
footer {{ margin-top: 2rem; color: #777; font-size: 0.8rem; overflow-wrap: anywhere; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""
