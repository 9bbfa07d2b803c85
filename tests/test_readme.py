"""The README's Python API section runs as written, block after block, in a fresh folder."""

import re
import warnings
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], flags=re.S)


def test_the_python_api_section_runs_as_written(tmp_path, monkeypatch):
    blocks = python_blocks("Python API")
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 2-epoch model may well warn; the point is that the code runs
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "flagged.parquet").exists() and (tmp_path / "detector.safetensors").exists()
    assert namespace["images"].shape[1:] == (1, 8, 8) and len(namespace["by_id"]) == len(namespace["data"])
