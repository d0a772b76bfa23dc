"""timm's own optimizer classes for ``bench_step.py``'s ``timm_*`` choices: an optional
benchmark dependency (``pip install timm==1.0.31``), imported only from here and only when a
``timm_*`` choice is measured. The project itself never imports timm.

timm imports torchvision, which has no build for the pinned torch; ``timm.optim`` needs none
of it, so the import goes through ``tests/reference/timm_shim.py`` (a torchvision stub, then
the real ``timm.optim``), as the scripts recording timm's reference trajectories do.

:func:`timm_optim` returns ``(module, "")`` or ``(None, reason)`` and never raises: when timm
is not importable, the benchmark reports its ``timm`` variants as unavailable with the reason.
Setting the environment variable ``BENCH_STEP_NO_TIMM=1`` makes it unavailable on purpose
(what a machine without timm sees; used by the smoke test).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

SHIM = Path(__file__).resolve().parent.parent / "tests" / "reference" / "timm_shim.py"
DISABLE_ENV = "BENCH_STEP_NO_TIMM"

_cache: dict[str, ModuleType] = {}


def timm_optim() -> tuple[ModuleType | None, str]:
    """``(timm.optim, "")`` through the shim, or ``(None, why it is unavailable)``."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None, f"timm disabled by {DISABLE_ENV}"
    if "shim" in _cache:
        return _cache["shim"].timm_optim, ""
    if importlib.util.find_spec("timm") is None:
        return None, "timm not installed (optional: pip install timm==1.0.31)"
    try:
        spec = importlib.util.spec_from_file_location("bench_timm_shim", SHIM)
        if spec is None or spec.loader is None:
            raise ImportError(f"no shim at {SHIM}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 (any import failure: report, never raise)
        sys.modules.pop("bench_timm_shim", None)
        return None, f"timm not importable ({type(err).__name__}: {err})"
    _cache["shim"] = module
    return module.timm_optim, ""


def timm_version() -> str | None:
    """timm's version when :func:`timm_optim` has imported it, else None."""
    module = _cache.get("shim")
    return None if module is None else getattr(module.timm, "__version__", None)
