"""SparseAdam with torch.optim.SparseAdam's arguments and numerics."""

from __future__ import annotations

from typing import Any

import optree
import torch

from .. import kernels as k
from ..base import GradientTransformation, ScalarOrSchedule, init_empty_state
from ..combine import chain
from ..hyperparams import check_number, concrete, is_schedule
from ..transforms import scale_by_learning_rate
from ..transforms.sparse import SparseRows, _flatten_updates, _is_sparse_rows, scale_by_sparse_adam
from ._common import maximize_part
from .adam import _betas


def _check_positive(name: str, label: str, value: Any, *, schedule_ok: bool = False) -> None:
    # torch.optim.SparseAdam requires lr > 0 and eps > 0 (strictly)
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise ValueError(f"Tensor {name} must be 1-element")
    check_number(name, value, schedule_ok=schedule_ok)
    if schedule_ok and is_schedule(value):
        return
    v = concrete(value)
    if v is not None and not v > 0.0:
        raise ValueError(f"Invalid {label}: {v} (expected {name} > 0)")


def _negate() -> GradientTransformation:
    # torch's maximize (``-grad``) for COO tensors and SparseRows (values negated, indices kept);
    # ``scale(-1.0)`` would see a SparseRows as two leaves and negate its indices too

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        leaves, spec = _flatten_updates(updates)
        at = [i for i, x in enumerate(leaves) if x is not None]
        flipped = k.mul([leaves[i].values if _is_sparse_rows(leaves[i]) else leaves[i] for i in at], -1.0,
                        donate=donate)
        for i, x in zip(at, flipped):
            leaves[i] = SparseRows(leaves[i].indices, x) if _is_sparse_rows(leaves[i]) else x
        return optree.tree_unflatten(spec, leaves), state

    return GradientTransformation(init_empty_state, update_fn)


def sparse_adam(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.999),
                eps: float | torch.Tensor = 1e-8, *, maximize: bool = False) -> GradientTransformation:
    """SparseAdam exactly as ``torch.optim.SparseAdam`` (same names, order and defaults).

    For row-sparse gradients (``nn.Embedding(sparse=True)``): ``g = -g`` if maximize, then
    Adam's moments and update only at the entries present in the coalesced gradient, with
    ``eps`` added to ``sqrt(v)`` without bias correction (:func:`scale_by_sparse_adam`);
    update ``-lr * (...)``. Rows never present in a gradient keep their params and state
    untouched. Dense gradients raise RuntimeError (torch's message), complex params
    ValueError at ``init``.

    Each gradient leaf is either a sparse COO tensor (eager, sparse cost; the update is a
    sparse COO tensor; not ``torch.compile``-able: dynamo refuses sparse tensors) or a
    :class:`~functional_optim.transforms.sparse.SparseRows` ``(indices, values)`` built
    from it outside the compiled region (``SparseRows.from_coo(p.grad)``): that form runs
    under ``torch.compile(fullgraph=True)``, traced once for a fixed number of entries,
    and gives a dense update shaped like the param, ``-0.0`` on untouched rows (so
    ``apply_updates`` leaves them bit-identical), at param-sized cost per step.

    Args:
      lr: learning rate > 0: a number, a 0-d tensor, or a schedule ``count -> lr``. Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: added to the denominator, > 0. Default 1e-8.
      maximize: maximize the objective instead of minimizing. Default False.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.sparse_adam(lr=0.1)
      >>> params = {"table": torch.zeros(3, 2)}
      >>> grad = torch.sparse_coo_tensor([[2]], torch.ones(1, 2), (3, 2), check_invariants=True)
      >>> updates, state = opt.update({"table": grad}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["table"]
      tensor([[ 0.0000,  0.0000],
              [ 0.0000,  0.0000],
              [-0.1000, -0.1000]])
      >>> from functional_optim.transforms.sparse import SparseRows
      >>> rows = SparseRows.from_coo(grad)  # the form to pass into torch.compile(opt.update)
      >>> updates, state = opt.update({"table": rows}, opt.init(params), params)
      >>> fo.apply_updates(params, updates)["table"]
      tensor([[ 0.0000,  0.0000],
              [ 0.0000,  0.0000],
              [-0.1000, -0.1000]])
    """
    _check_positive("lr", "learning rate", lr, schedule_ok=True)
    _check_positive("eps", "epsilon value", eps)
    b1, b2 = _betas(betas)
    negate = [_negate()] if maximize_part(maximize) else []  # maximize_part validates the bool
    return chain(*negate, scale_by_sparse_adam(b1, b2, eps), scale_by_learning_rate(lr))
