"""Workarounds for bugs in the torch versions we support, applied once at import.

torch.compile and optree dicts whose values are all None: dynamo constant-folds its
``dict_flatten``/``dict_unflatten`` polyfills into optree's real functions, whose metadata
differs, and tracing fails ("length mismatch" / "Unexpected type in sourceless builder";
seen with torch 2.13). Our trees hold such dicts whenever a masked or partitioned group
sees no leaf of a sub-dict (e.g. ``masked(tx, {"encoder": False, ...})``). Turning off
constant folding through these two polyfills makes dynamo trace them instead; results are
unchanged and only tracing does a little more work.
"""

from __future__ import annotations


def _trace_dict_polyfills() -> None:
    try:
        import torch._dynamo.polyfills.pytree as polyfills
    except Exception:  # a torch without these polyfills does not have the bug
        return
    for name in ("dict_flatten", "dict_unflatten"):
        fn = getattr(polyfills, name, None)
        if fn is not None:
            fn.__torch_dynamo_can_constant_fold_through__ = False


_trace_dict_polyfills()
