"""The README's Python examples run as written (docs that match the code)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2, "the README lost its quickstart examples"
    namespace: dict = {}
    for code in blocks:  # later blocks reuse names (x, key) of earlier ones, as a reader would
        exec(compile(code, str(README), "exec"), namespace)
    assert namespace["logits"].shape == (64, 10)
    assert set(namespace["stats"]) == {"mean", "var"}


def test_readme_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_cmd = 'pip install -e ".[test]" && python -m pytest'
    assert test_cmd in text and test_cmd in ci
    assert "bnjax run configs/quickstart.toml" in text
