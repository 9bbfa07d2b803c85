"""`genaug report`: every flagged image on one self-contained page, user text inert, checked in a real browser."""

import base64
import hashlib
import io
import json
import os
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import genaug
from browser import render
from genaug.cli.app import main
from genaug.data.imageset import ImageSet
from genaug.data.parquet import image_table, write_table
from genaug.errors import GenaugError
from genaug.report import CSP, THUMBNAIL_PIXELS, build_report, report_html, write_report
from genaug.terminal import inert
from genaug.train import TrainConfig

SCRIPT_LABEL = "<script>alert(1)</script>"
CLASS_NAMES = ["cat", SCRIPT_LABEL, "dog & co"]
HOSTILE_ID = '"><img src=x onerror=alert(2)>'
HOSTILE_PATH = 'a&b"<i onmouseover=alert(3)>.png'
# A bidi override and an escape sequence: they would reorder or hide what is shown.
SPOOFED_ID = "evil\u202egnp.exe\x1b[2J"
SETTINGS = {
    "version": genaug.__version__,
    "job": "detect-outliers",
    "command": "genaug detect-outliers '<b>bold</b>' -o x.parquet",
    "score": "recon",
    "fdr": 0.05,
    "contamination": None,
    "mode": "self-audit",
    "model": "ae",
    "flag_rule": "BH at fdr 0.05",
}


def scored_table(n=40, n_flagged=7, *, columns=None, size=8, seed=0):
    """A detect-outliers table of `n` noise images, the `n_flagged` highest scores flagged.

    Rows 5 and 6 (a hostile id and path, a spoofing id) score highest.
    """
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8))
    ids = [f"img-{i:03d}" for i in range(n)]
    ids[5], ids[6] = HOSTILE_ID, SPOOFED_ID
    paths = [None] * n
    paths[5] = HOSTILE_PATH
    score = rng.normal(size=n)
    score[5], score[6] = 9.0, 8.0
    rank = np.argsort(np.argsort(-score, kind="stable"), kind="stable") + 1
    data = ImageSet(images, np.arange(n) % 3, CLASS_NAMES, ids, paths, "test")
    cols = {
        "score": score,
        "bits_per_dim": pa.nulls(n, pa.float64()),
        "p_value": np.clip(np.exp(-score), 0, 1),
        "is_outlier": rank <= n_flagged,
        "rank": rank,
        **(columns or {}),
    }
    return image_table(data, cols)


def write_scores(path, table, settings=SETTINGS):
    write_table(table, path, genaug_metadata=settings, class_names=CLASS_NAMES)
    return path


def replace_column(table, name, array):
    return table.set_column(table.schema.get_field_index(name), name, array)


@pytest.fixture
def scores(tmp_path):
    return write_scores(tmp_path / "scores.parquet", scored_table())


# -- a small DOM from the standard library's parser ---------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def all(self, tag=None, cls=None, **attrs):
        """Every element below this one with `tag`, class `cls` and the given attribute values."""
        found = []
        for c in self.children:
            if isinstance(c, Node):
                if (tag is None or c.tag == tag) and (cls is None or cls in c.attrs.get("class", "").split()):
                    if all(c.attrs.get(k) == v for k, v in attrs.items()):
                        found.append(c)
                found += c.all(tag, cls, **attrs)
        return found

    def one(self, tag=None, cls=None, **attrs):
        found = self.all(tag, cls, **attrs)
        assert len(found) == 1, (tag, cls, attrs, len(found))
        return found[0]


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.node = Node("#document", {})

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.node)
        self.node.children.append(node)
        if tag not in VOID:
            self.node = node

    def handle_startendtag(self, tag, attrs):
        self.node.children.append(Node(tag, attrs, self.node))

    def handle_endtag(self, tag):
        node = self.node
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.node = node.parent

    def handle_data(self, data):
        self.node.children.append(data)


def parse(page: str) -> Node:
    builder = _Builder()
    builder.feed(page)
    builder.close()
    return builder.root


def tiles(dom, section):
    return dom.one("section", id=section).all("figure", cls="tile")


def flagged_rows(table):
    flagged = np.asarray(table["is_outlier"])
    return [int(i) for i in np.argsort(np.asarray(table["rank"]), kind="stable") if flagged[i]]


# -- the page -------------------------------------------------------------------
def test_page_shows_every_flagged_image_in_rank_order(scores):
    table = pq.read_table(scores)
    report = build_report(scores)
    dom = parse(report.html)
    shown = tiles(dom, "outliers")
    assert [int(t.attrs["data-row"]) for t in shown] == flagged_rows(table)
    images = [t.one("img") for t in shown]
    assert all(img.attrs["src"].startswith("data:image/png;base64,") for img in images)
    # The inlined bytes are the file's own PNGs.
    pngs = table["image"].combine_chunks().field("bytes").to_pylist()
    for t, img in zip(shown, images):
        assert base64.b64decode(img.attrs["src"].split(",", 1)[1]) == pngs[int(t.attrs["data-row"])]
    ids = table["id"].to_pylist()
    # Control characters are shown as escapes (see test_user_strings_are_text_never_markup).
    assert [t.one("span", cls="id").text() for t in shown] == [inert(ids[i]) for i in flagged_rows(table)]
    assert report.n_flagged == report.n_shown == 7 and report.n_images == 40
    assert dom.one("p", cls="summary").text().startswith("7 of 40 images flagged (BH at fdr 0.05)")


def test_user_strings_are_text_never_markup(scores):
    page = report_html(scores, title="<i>my</i> report")
    dom = parse(page)
    # No script anywhere, no event handler, no resource from anywhere but data: URIs.
    assert "<script" not in page.lower()
    elements = dom.all()
    assert not [e for e in elements if any(a.lower().startswith("on") for a in e.attrs)]
    assert {e.tag for e in elements} <= {
        "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "p", "strong", "section", "div",
        "figure", "img", "figcaption", "span", "br", "table", "tr", "th", "td", "svg", "g", "rect", "line", "text",
        "footer",
    }  # fmt: skip
    assert all(e.attrs["src"].startswith("data:image/") for e in dom.all("img"))
    assert dom.one("meta", **{"http-equiv": "Content-Security-Policy"}).attrs["content"] == CSP
    # Each hostile string reads back literally as text (or as an attribute value).
    labels = [s.text() for s in dom.one("section", id="outliers").all("span", cls="label")]
    assert f"class {SCRIPT_LABEL}" in labels
    assert SCRIPT_LABEL in [td.text() for td in dom.all("td", cls="class")]
    ids = [s.text() for s in dom.all("span", cls="id")]
    assert HOSTILE_ID in ids
    assert dom.one("img", alt=HOSTILE_ID).attrs["title"] == HOSTILE_PATH
    settings = {tr.one("th").text(): tr.one("td").text() for tr in dom.one("section", id="settings").all("tr")}
    assert settings["command"] == SETTINGS["command"] and settings["flag_rule"] == "BH at fdr 0.05"
    assert dom.one("h1").text() == "<i>my</i> report" and dom.one("head").one("title").text() == "<i>my</i> report"
    # Control and bidi characters are shown as escapes, not obeyed.
    assert "\u202e" not in page and "\x1b" not in page
    assert "evil\\u202egnp.exe\\x1b[2J" in ids


def test_histogram_marks_the_lowest_flagged_score(scores):
    table = pq.read_table(scores)
    score, flagged = np.asarray(table["score"]), np.asarray(table["is_outlier"])
    report = build_report(scores)
    svg = parse(report.html).one("svg", cls="histogram")
    line = svg.one("line", cls="threshold")
    threshold = score[flagged].min()
    assert float(line.attrs["data-score"]) == threshold == report.threshold
    bars = svg.all("g", cls="bar")
    assert sum(int(b.one("rect", cls="all").attrs["height"] != "0.00") for b in bars) >= 3
    holding = [b for b in bars if float(b.attrs["data-from"]) <= threshold <= float(b.attrs["data-to"])]
    rect = holding[-1].one("rect", cls="flagged")
    x, width = float(rect.attrs["x"]), float(rect.attrs["width"])
    # The line stands in the bar holding the threshold, at its place within the bin.
    assert x <= float(line.attrs["x1"]) <= x + width + 1
    # A bar is red exactly when it holds a flagged score: none left of the threshold's bar.
    for k, bar in enumerate(bars):
        lo, hi = float(bar.attrs["data-from"]), float(bar.attrs["data-to"])
        inside = (score >= lo) & ((score < hi) | (k == len(bars) - 1))
        assert (float(bar.one("rect", cls="flagged").attrs["height"]) > 0) == (flagged & inside).any()
        if hi < threshold:
            assert not (flagged & inside).any()


def test_nothing_flagged_says_there_is_no_threshold_and_shows_the_top_scores():
    table = scored_table(n_flagged=0)
    report = build_report(table, settings=SETTINGS)
    dom = parse(report.html)
    assert report.threshold is None and not dom.all("line", cls="threshold")
    assert "no threshold" in dom.one("p", cls="threshold-note").text()
    assert tiles(dom, "outliers") == [] and "No image is flagged" in dom.one("section", id="outliers").text()
    top = [int(t.attrs["data-row"]) for t in tiles(dom, "top-scores")]
    assert top == [int(i) for i in np.argsort(-np.asarray(table["score"]))[:20]]


def test_per_class_counts_are_flagged_and_total_per_label():
    table = scored_table(n=60, n_flagged=11)
    labels = table["label"].to_pylist()
    labels[:4] = [None] * 4  # rows without a label are counted apart
    table = replace_column(table, "label", pa.array(labels, pa.int64()))
    dom = parse(report_html(table, settings=SETTINGS, class_names=CLASS_NAMES))
    flagged = np.asarray(table["is_outlier"])
    expected = {}
    for label, bad in zip(labels, flagged):
        name = "(no label)" if label is None else CLASS_NAMES[label]
        total, n_bad = expected.get(name, (0, 0))
        expected[name] = (total + 1, n_bad + int(bad))
    rows = dom.one("section", id="classes").all("tr")[1:]
    got = {
        r.one("td", cls="class").text(): (int(r.one("td", cls="total").text()), int(r.one("td", cls="flagged").text()))
        for r in rows
    }
    assert got == expected
    assert [r.one("td", cls="class").text() for r in rows] == [*CLASS_NAMES, "(no label)"]


def test_without_labels_the_page_says_so(scores):
    table = pq.read_table(scores)
    table = replace_column(table, "label", pa.nulls(table.num_rows, pa.int64()))
    dom = parse(report_html(table.drop(["label"]), settings=SETTINGS))
    assert dom.one("section", id="classes").text() == "Per classThe file has no labels."
    assert not dom.all("span", cls="label")
    assert "no labels" in parse(report_html(table, settings=SETTINGS)).one("section", id="classes").text()


def test_the_cap_shows_the_top_ranked_and_counts_the_rest(scores):
    report = build_report(scores, max_images=3)
    section = parse(report.html).one("section", id="outliers")
    rows = [int(t.attrs["data-row"]) for t in section.all("figure", cls="tile")]
    assert rows == flagged_rows(pq.read_table(scores))[:3]
    assert "Showing the first 3 of 7; 4 not shown" in section.text()
    assert (report.n_flagged, report.n_shown) == (7, 3)
    with pytest.raises(GenaugError, match="max_images"):
        build_report(scores, max_images=0)


def test_edge_cases_appear_beside_the_outliers_rarest_first(tmp_path):
    n = 40
    rarity = np.linspace(0, 1, n)[::-1].copy()
    base = scored_table(n)
    flagged = np.asarray(base["is_outlier"])
    edge = (~flagged) & (np.arange(n) % 4 == 1)
    category = np.where(flagged, "outlier", np.where(edge, "edge-case", "typical"))
    path = write_scores(tmp_path / "c.parquet", scored_table(n, columns={"rarity": rarity, "category": list(category)}))
    dom = parse(report_html(path))
    rows = [int(t.attrs["data-row"]) for t in tiles(dom, "edge-cases")]
    assert sorted(rows) == np.flatnonzero(edge).tolist()
    assert rarity[rows].tolist() == sorted(rarity[rows], reverse=True)
    assert all("rarity" in t.one("span", cls="numbers").text() for t in tiles(dom, "edge-cases"))
    assert len(tiles(dom, "outliers")) == flagged.sum()
    edges_per_class = {r.one("td", cls="class").text(): int(r.one("td", cls="edge").text()) for r in dom.all("tr")[1:4]}
    assert edges_per_class == {name: int(edge[np.arange(n) % 3 == k].sum()) for k, name in enumerate(CLASS_NAMES)}
    # Without a category column there is no edge-case grid.
    assert not parse(report_html(scored_table(n), settings=SETTINGS)).all("section", id="edge-cases")


def test_large_images_are_inlined_as_thumbnails_and_broken_ones_as_placeholders():
    table = scored_table(n=10, n_flagged=3, size=400)
    images = table["image"].to_pylist()
    first, second = flagged_rows(table)[:2]
    images[second]["bytes"] = b"\x89PNG\r\n\x1a\nnot an image at all"
    table = replace_column(table, "image", pa.array(images, table.schema.field("image").type))
    dom = parse(report_html(table, settings=SETTINGS))
    by_row = {int(t.attrs["data-row"]): t for t in tiles(dom, "outliers")}
    src = by_row[first].one("img").attrs["src"]
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
        assert max(im.size) == THUMBNAIL_PIXELS
    assert len(src) < 60_000 < len(images[first]["bytes"])  # a 400x400 noise PNG is ~160 kB
    assert not by_row[second].all("img") and by_row[second].one("div", cls="missing")


# -- writing --------------------------------------------------------------------
def hidden_files(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_write_is_atomic_and_never_touches_the_input(scores, tmp_path, monkeypatch):
    out = tmp_path / "report.html"
    report = write_report(scores, out)
    assert out.read_text(encoding="utf-8") == report.html == report_html(scores)
    assert hidden_files(tmp_path) == []
    before = scores.read_bytes()
    with pytest.raises(GenaugError, match="would overwrite"):
        write_report(scores, scores)
    assert scores.read_bytes() == before

    # A failed write leaves the old report whole and no temp file behind.
    old = out.read_bytes()

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(GenaugError, match="cannot write .*No space left on device"):
        write_report(scores, out, title="new")
    monkeypatch.undo()
    assert out.read_bytes() == old and hidden_files(tmp_path) == []


def test_a_table_fresh_from_detection_gives_the_same_page_as_its_file(real_output):
    result, path = real_output
    from_file = report_html(path)
    settings = {"version": genaug.__version__, "job": "detect-outliers", "command": "test", **result.settings}
    title = f"genaug report: {path.name}"
    from_table = report_html(result.table(), settings=settings, class_names=result.data.class_names, title=title)
    # Only the footer differs: it names the file or says "table".
    assert from_file.replace(str(path), "table") == from_table


# -- a real detect-outliers output, the CLI and the browser --------------------------
@pytest.fixture(scope="module")
def real_output(tmp_path_factory, digits):
    data = digits.subset(np.arange(100))
    result = genaug.detect_outliers(
        data, family="ae", contamination=0.1, train_config=TrainConfig(epochs=1, progress=False, seed=0)
    )
    path = tmp_path_factory.mktemp("detect") / "outliers.parquet"
    result.write(path, command="test")
    return result, path


def test_cli_writes_the_report_of_a_detect_outliers_output(real_output, tmp_path, capsys):
    result, path = real_output
    out = tmp_path / "report.html"
    assert main(["report", str(path), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"report of 10 flagged of 100 images -> {out}"
    dom = parse(out.read_text(encoding="utf-8"))
    expected = [result.data.ids[i] for i in result.top(result.n_flagged)]
    assert [t.one("span", cls="id").text() for t in tiles(dom, "outliers")] == expected
    settings = {tr.one("th").text(): tr.one("td").text() for tr in dom.one("section", id="settings").all("tr")}
    assert settings["mode"] == "self-audit" and settings["model"] == "ae" and settings["flag_rule"] == "top 10.00%"
    assert main(["report", str(path), "-o", str(out), "--max-images", "4"]) == 0
    assert "(6 not shown; raise --max-images)" in capsys.readouterr().out


def test_detect_outliers_report_option_writes_the_page_of_its_own_output(digits, tmp_path):
    data = tmp_path / "digits.npz"
    np.savez(data, x=digits.images[:60].numpy())
    out, page = tmp_path / "out.parquet", tmp_path / "page.html"
    args = ["detect-outliers", str(data), "-o", str(out), "--report", str(page), "--model", "ae",
            "--epochs", "1", "--contamination", "0.1", "--quiet", "--top", "0"]
    assert main(args) == 0
    assert report_html(out).split("<footer")[0] == page.read_text(encoding="utf-8").split("<footer")[0]
    # The report path is checked before any work: it may not be the data or the output.
    page.unlink()
    assert main([*args[:4], "--report", str(out), *args[6:]]) == 2
    assert not page.exists()


def test_cli_bad_input_is_one_line_and_writes_nothing(scores, tmp_path, capsys):
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), plain)
    other_job = write_scores(tmp_path / "augmented.parquet", scored_table(), {"job": "augment"})
    text = tmp_path / "notes.txt"
    text.write_text("not parquet")
    cases = {
        "missing file": (tmp_path / "nope.parquet", "does not exist"),
        "not a detect-outliers output": (plain, "not a detect-outliers output: it has no column 'id'"),
        "another job's output": (other_job, "is a augment output, not a detect-outliers output"),
        "not Parquet": (text, "cannot read Parquet file"),
    }
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    for name, (source, message) in cases.items():
        out = tmp_path / f"{name.replace(' ', '_')}.html"
        assert main(["report", str(source), "-o", str(out)]) == 2, name
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (name, lines)
        assert not out.exists(), name
    assert main(["report", str(scores), "-o", str(scores)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "would overwrite SCORES" in lines[0]
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before and hidden_files(tmp_path) == []


# -- in a real browser ----------------------------------------------------------
# Added to a copy of the page, and allowed by its hash in the page's own CSP:
# images, styles and everything else stay under the policy users get.
CHECK = """
addEventListener("load", () => {
  const b = document.body.dataset, imgs = [...document.images];
  b.images = imgs.length;
  b.decoded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  b.scripts = document.querySelectorAll("script:not(#check)").length;
  b.grid = getComputedStyle(document.querySelector(".grid")).display;
  b.histogram = Math.round(document.querySelector("svg.histogram").getBoundingClientRect().height);
});
"""


def rendered(page_path, tmp_path):
    """The DOM chromium builds of the page at `page_path`, with CHECK's findings on <body>."""
    page = page_path.read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(CHECK.encode()).digest()).decode()
    assert page.count(CSP) == 1
    page = page.replace(CSP, f"{CSP}; script-src 'sha256-{digest}'")
    head, _, tail = page.rpartition("</body>")
    checked = tmp_path / f"checked-{page_path.name}"
    checked.write_text(f'{head}<script id="check">{CHECK}</script></body>{tail}', encoding="utf-8")
    dom = parse(render(checked))
    return dom, dom.one("body").attrs


def test_in_a_browser_hostile_strings_stay_text_and_every_image_decodes(scores, tmp_path):
    out = write_report(scores, tmp_path / "report.html")
    dom, found = rendered(tmp_path / "report.html", tmp_path)
    assert found["data-scripts"] == "0"  # nothing a label, id or path held became a script
    assert found["data-images"] == found["data-decoded"] == str(out.n_flagged)
    assert found["data-grid"] == "flex" and int(found["data-histogram"]) > 100  # the inline style applies
    labels = [s.text() for s in dom.all("span", cls="label")]
    assert f"class {SCRIPT_LABEL}" in labels
    assert not [e for e in dom.all() if any(a.startswith("on") for a in e.attrs)]
    ids = [s.text() for s in dom.one("section", id="outliers").all("span", cls="id")]
    table = pq.read_table(scores)
    assert ids == [inert(table["id"][i].as_py()) for i in flagged_rows(table)]


def test_in_a_browser_a_real_report_shows_every_flagged_digit(real_output, tmp_path):
    result, path = real_output
    write_report(path, tmp_path / "digits.html")
    dom, found = rendered(tmp_path / "digits.html", tmp_path)
    n_edge = int((result.category == "edge-case").sum())
    assert result.n_flagged == 10 and n_edge > 0  # detect's edge cases get their own grid
    assert found["data-images"] == found["data-decoded"] == str(result.n_flagged + n_edge)
    flagged = {result.data.ids[i] for i in np.flatnonzero(result.is_outlier)}
    assert {s.text() for s in dom.one("section", id="outliers").all("span", cls="id")} == flagged
    edge = {result.data.ids[i] for i in np.flatnonzero(result.category == "edge-case")}
    assert {s.text() for s in dom.one("section", id="edge-cases").all("span", cls="id")} == edge
    assert json.loads(dom.one("line", cls="threshold").attrs["data-score"]) == result.score[result.is_outlier].min()
