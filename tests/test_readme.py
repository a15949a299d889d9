"""The README's Python example runs as written."""

import re

from conftest import REPO


def test_readme_example_runs():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = next(b for b in blocks if "from pyrovae import fit" in b)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    model = namespace["model"]
    # 500 steps recover |a| (its sign is not identified) and b from 1000 points within 0.2
    # (their standard errors are ~0.07).
    assert abs(abs(model.a.item()) - 2.0) < 0.2 and abs(model.b.item() - 1.0) < 0.2
