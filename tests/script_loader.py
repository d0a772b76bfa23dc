"""Load a script of the repository (an example, a benchmark) as a module, for its tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_script(relative_path: str, name: str) -> ModuleType:
    """The module of ``ROOT / relative_path`` under ``name`` (registered in ``sys.modules``,
    where dataclasses and pickling look a module up)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
