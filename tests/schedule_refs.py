"""The schedule reference values (tests/reference/schedules.json) and how to rebuild each case.

The JSON is written by tests/reference/generate_schedules.py from optax and MONAI; a case
names ``fn`` (the same name in ``functional_optim`` and in optax) and its ``kwargs``.
"""

from __future__ import annotations

import importlib.util
import json
import os

import torch

import functional_optim as fo

_HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference")
_spec = importlib.util.spec_from_file_location("_generate_schedules", os.path.join(_HERE, "generate_schedules.py"))
_gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_gen)

with open(os.path.join(_HERE, "schedules.json")) as _f:
    REFERENCE = json.load(_f)
CASES = REFERENCE["cases"]
STEPS = REFERENCE["meta"]["steps"]
OPTAX_CASES = [name for name, case in CASES.items() if case["library"] == "optax"]
MONAI_CASES = [name for name, case in CASES.items() if case["library"] == "monai"]


def build(name: str):
    """``fo.<fn>(**kwargs)`` for the named case."""
    return _gen.build(CASES[name], fo)


def reference(name: str) -> torch.Tensor:
    return torch.tensor(CASES[name]["values"], dtype=torch.float64)


def assert_matches(actual, name: str, rtol: float = 1e-12) -> None:
    """``actual`` (a sequence of values) equals the reference to ``rtol`` (relative; the
    absolute floor is 1e-15 of the schedule's largest value, for points at or near 0)."""
    ref = reference(name)[: len(actual)]
    got = torch.tensor([float(v) for v in actual], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=rtol, atol=1e-15 * float(ref.abs().max()), msg=lambda m: f"{name}: {m}")
