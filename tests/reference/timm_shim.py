"""Import timm 1.0.31 without torchvision, for the scripts that record timm's reference
trajectories (``generate_timm_*.py``). Never imported by the project or its tests.

No torchvision build matches the pinned torch, and ``timm.optim`` needs none of it: timm
imports it only through ``timm.data`` (image transforms) and ``timm.layers``. This module
installs an import hook that serves any ``torchvision...`` module as a permissive stub
(every attribute is another stub, callable and subclassable), then imports ``timm.optim``.

Usage (from a generation script):
    from timm_shim import timm_optim   # the real timm.optim module
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types


class _StubMeta(type):
    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub_class(name)


def _stub_class(name: str) -> type:
    return _StubMeta(name, (), {"__init__": lambda self, *a, **k: None,
                                "__call__": lambda self, *a, **k: None})


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub_class(name)


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        module.__version__ = "0.0.0+stub"
        return module

    def exec_module(self, module):
        pass


try:
    import torchvision  # noqa: F401  (a real build: use it)
except Exception:
    sys.modules.pop("torchvision", None)
    sys.meta_path.insert(0, _StubFinder())

timm_optim = importlib.import_module("timm.optim")
timm = importlib.import_module("timm")
