"""Every Python example of the README runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), namespace)
    if "meta_loss" in namespace:  # the MAML block: a finite second-order meta-gradient
        assert torch.isfinite(namespace["meta_loss"])
        assert all(p.grad is not None and torch.isfinite(p.grad).all()
                   for p in namespace["model"].parameters())
