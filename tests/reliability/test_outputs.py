"""Outputs never clobber inputs: `-o` onto any input or onto a non-file is refused,
stale temp files of killed runs are cleaned, temp names fit any legal output name."""

import hashlib
import os
import stat
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from genaug.atomic import NAME_MAX, check_output, clean_stale, temp_path
from genaug.cli.app import main
from genaug.data.parquet import write_table
from genaug.errors import GenaugError


def run_cli(capsys, *args):
    """(exit code, stdout, stderr) of the CLI run in-process."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A small .npz dataset, a recipe and a checkpoint fitted on it."""
    root = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.integers(0, 256, (60, 8, 8), dtype=np.uint8), y=np.arange(60) % 3)
    (root / "recipe.yaml").write_text("transforms:\n  - {name: GaussNoise, p: 1.0}\n")
    code = main(["fit", str(root / "data.npz"), "-o", str(root / "m.safetensors"), "--epochs", "1", "--quiet"])
    assert code == 0
    return root


COMMANDS_WITH_CHECKPOINT = [
    ["detect-outliers", "{data}", "--model-path", "{ckpt}", "-o", "{ckpt}", "--quiet"],
    ["rebalance", "{data}", "--model-path", "{ckpt}", "-o", "{ckpt}", "--quiet"],
    ["augment", "{data}", "--model-path", "{ckpt}", "--synthetic-ratio", "0.1", "-o", "{ckpt}", "--quiet"],
    ["synthesize", "--model-path", "{ckpt}", "-n", "4", "-o", "{ckpt}", "--quiet"],
]


@pytest.mark.parametrize("template", COMMANDS_WITH_CHECKPOINT, ids=lambda t: t[0])
def test_output_onto_the_checkpoint_is_refused(workspace, capsys, template):
    ckpt = workspace / "m.safetensors"
    before = digest(ckpt)
    args = [a.format(data=workspace / "data.npz", ckpt=ckpt) for a in template]
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err)
    assert "--model-path" in err
    assert digest(ckpt) == before


def test_output_onto_the_checkpoint_through_a_link_or_another_spelling_is_refused(workspace, capsys):
    ckpt = workspace / "m.safetensors"
    before = digest(ckpt)
    hard = workspace / "hard.safetensors"
    if not hard.exists():
        os.link(ckpt, hard)
    spelled = workspace / "sub" / ".." / "m.safetensors"
    (workspace / "sub").mkdir(exist_ok=True)
    for target in (hard, spelled):
        code, _, err = run_cli(capsys, "detect-outliers", workspace / "data.npz", "--model-path", ckpt, "-o", target, "-q")
        assert_one_line_error(code, err)
    assert digest(ckpt) == before


def test_output_onto_data_recipe_or_the_second_output_is_refused(workspace, capsys):
    data, recipe = workspace / "data.npz", workspace / "recipe.yaml"
    before = {p: digest(p) for p in (data, recipe)}
    cases = [
        ["augment", data, "--recipe", recipe, "-o", recipe],
        ["augment", data, "-o", data],
        ["rebalance", data, "--model-path", workspace / "m.safetensors", "-o", workspace / "w.parquet",
         "--resampled", workspace / "w.parquet"],
    ]
    for args in cases:
        code, _, err = run_cli(capsys, *args, "--quiet")
        assert_one_line_error(code, err)
    assert {p: digest(p) for p in before} == before
    assert not (workspace / "w.parquet").exists()


def test_output_inside_a_dataset_folder_is_refused(capsys, tmp_path):
    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(data / f"{i}.png")
    before = {p.name: digest(p) for p in data.iterdir()}
    for target in (data / "0.png", data / "new.parquet", tmp_path / "data" / "x.parquet"):
        code, _, err = run_cli(capsys, "augment", tmp_path / "data", "-o", target, "-q")
        assert_one_line_error(code, err)
        assert "inside the DATA folder" in err
    assert {p.name: digest(p) for p in data.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["a"]


def test_output_that_is_not_a_regular_file_is_refused(workspace, capsys, tmp_path):
    fifo = tmp_path / "pipe.parquet"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.parquet"
    folder.mkdir()
    link = tmp_path / "link.parquet"
    link.symlink_to(tmp_path / "elsewhere.parquet")
    for target in (fifo, folder, link):
        code, _, err = run_cli(capsys, "augment", workspace / "data.npz", "-o", target, "-q")
        assert_one_line_error(code, err)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and folder.is_dir() and link.is_symlink()
    assert not (tmp_path / "elsewhere.parquet").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_output_onto_a_device_node_is_refused(workspace, capsys, tmp_path):
    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    code, _, err = run_cli(capsys, "augment", workspace / "data.npz", "-o", node, "-q")
    assert_one_line_error(code, err)
    assert stat.S_ISCHR(os.lstat(node).st_mode)


def test_python_api_writes_refuse_non_files_too(tmp_path):
    fifo = tmp_path / "pipe.parquet"
    os.mkfifo(fifo)
    with pytest.raises(GenaugError, match="not a regular file"):
        write_table(pa.table({"a": [1]}), fifo, genaug_metadata={})


def _dead_pid() -> int:
    """A pid no process has: a child that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temp_files_of_killed_writers_are_cleaned_on_the_next_write(tmp_path):
    target = tmp_path / "out.parquet"
    dead = target.with_name(temp_path(target).name.replace(f".{os.getpid()}-", f".{_dead_pid()}-"))
    dead.write_bytes(b"half a parquet file")
    alive = target.with_name(temp_path(target).name.replace(f".{os.getpid()}-", f".{os.getppid()}-"))
    alive.write_bytes(b"another writer, still running")
    unrelated = tmp_path / ".out.parquet.notes.tmp"
    unrelated.write_bytes(b"not ours")
    write_table(pa.table({"a": [1, 2]}), target, genaug_metadata={})
    assert pq.read_table(target).num_rows == 2
    assert not dead.exists()
    assert alive.exists() and unrelated.exists()


def test_an_interrupted_replacement_gets_its_old_file_back(tmp_path):
    target = tmp_path / "weights.parquet"
    backup = target.with_name(temp_path(target, "old").name.replace(f".{os.getpid()}-", f".{_dead_pid()}-"))
    write_table(pa.table({"a": [7]}), backup, genaug_metadata={})
    assert clean_stale(target) == [backup]
    assert pq.read_table(target)["a"].to_pylist() == [7]


def test_a_253_byte_output_name_is_written(tmp_path):
    target = tmp_path / ("o" * 245 + ".parquet")
    assert len(target.name) == 253
    write_table(pa.table({"a": [1]}), target, genaug_metadata={})
    assert pq.read_table(target).num_rows == 1
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@settings(max_examples=60, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=120))
def test_temp_names_fit_and_belong_to_their_target(name):
    target_name = name.encode("utf-8")[:NAME_MAX].decode("utf-8", "ignore")
    if target_name in ("", ".", ".."):
        return
    tmp = temp_path(f"/some/dir/{target_name}")
    assert len(tmp.name.encode("utf-8")) <= NAME_MAX
    assert tmp.parent.as_posix() == "/some/dir" and tmp.name.startswith(".")
    other = temp_path(f"/some/dir/{target_name}x")
    assert other.name.rsplit(".", 2)[0] != tmp.name.rsplit(".", 2)[0]


def test_check_output_names_the_input_it_would_overwrite(tmp_path):
    src = tmp_path / "data.npz"
    src.write_bytes(b"x")
    with pytest.raises(GenaugError, match=r"DATA \(.*data.npz\)"):
        check_output(src, [("DATA", src)])
    assert check_output(tmp_path / "new.parquet", [("DATA", src), ("--model-path", None)]) == tmp_path / "new.parquet"
