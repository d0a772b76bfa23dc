"""``bf16_state``: keep any transform's optimizer state in bfloat16 (2 bytes per entry),
rounded stochastically so that small moving-average updates are not lost."""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare, needs_of_all
from ..tree import leaves as fo_leaves
from ..tree import map as tree_map

__all__ = ["bf16_state", "Bf16State"]

_ROUNDINGS = ("stochastic", "nearest")


class Bf16State(NamedTuple):
    """State of :func:`bf16_state`."""

    count: torch.Tensor  # 0-d int32: updates so far (the step of the rounding's random bits)
    inner: Any  # the wrapped transform's state, its floating tensors of >= 1 dimension in bfloat16


def _stored(x: Any) -> bool:
    # the state leaves kept in bfloat16: floating tensors with at least one dimension (moments,
    # accumulators); 0-d scalars (counts, per-param norms) keep their dtype
    return isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() > 0


def bf16_state(inner: GradientTransformation, rounding: str = "stochastic", seed: int = 0, *,
               compute_dtype: torch.dtype | None = None) -> GradientTransformation:
    r"""Keep ``inner``'s state in bfloat16 between steps, computing in ``compute_dtype``.

    Each update, with :math:`S` the stored state and :math:`t` the step:

    .. math::

        S_{32} &= \operatorname{float}(S) \\
        (u, S'_{32}) &= \texttt{inner.update}(g, S_{32}, p) \\
        S &\leftarrow \operatorname{round}_{bf16}(S'_{32}) \quad \text{(stochastically: }
            E[\operatorname{round}(x)] = x)

    for every floating state tensor with at least one dimension (moments, accumulators:
    half the bytes of float32); 0-d scalars and integer counts keep their dtype.
    Stochastic rounding keeps the expectation of an exponential moving average whose
    per-step change is below bfloat16's resolution (about :math:`2^{-8}` relative), where
    round-to-nearest would freeze it. The random bits are a hash of ``(seed, step, state
    leaf, element index)`` (:func:`kernels.stochastic_round
    <functional_optim.kernels.stochastic_round>`), not a global generator: the same seed
    gives the same bits eagerly, compiled and under ``vmap``. Bits are keyed by each state
    leaf's path in the state tree and its element index, so this declares at least
    ``Needs.LEAVES`` (each param its own leaf). Derivatives do not flow through the
    stored state from one step to the next (the rounding is piecewise constant: its
    derivative is 0); within a step they flow through ``inner`` as usual.

    Args:
      inner: the transform whose state is stored in bfloat16.
      rounding: ``"stochastic"`` (default) or ``"nearest"`` (round to nearest even).
      seed: the integer seed of the random bits. Default 0.
      compute_dtype: the dtype the stored state is expanded to for ``inner.update``.
        Default None: the widest of float32 and the updates' dtypes (float32 for bfloat16
        and float32 params, float64 for float64 ones). The updates ``inner`` returns are
        cast back to the incoming updates' dtypes.

    References:
      Zamirai et al., *Revisiting BFloat16 Training*, 2020, arXiv:2010.06192.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.bf16_state(fo.adam(1e-3))
      >>> params = {"w": torch.zeros(3)}
      >>> state = tx.init(params)
      >>> _, state = tx.update({"w": torch.tensor([1.0, 2.0, 3.0])}, state, params)
      >>> state.inner[0].mu["w"].dtype, state.count
      (torch.bfloat16, tensor(1, dtype=torch.int32))
    """
    if not isinstance(inner, GradientTransformation):
        raise TypeError(f"inner must be a GradientTransformation, got {type(inner).__name__}")
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if compute_dtype is not None and not (isinstance(compute_dtype, torch.dtype)
                                          and compute_dtype.is_floating_point):
        raise TypeError(f"compute_dtype must be a floating torch.dtype or None, got {compute_dtype!r}")

    def store(state: Any, count: torch.Tensor) -> Any:
        paths, leaves, spec = optree.tree_flatten_with_path(state, none_is_leaf=True)
        chosen = [i for i, x in enumerate(leaves) if _stored(x)]
        xs = [leaves[i].detach() for i in chosen]  # the rounding is piecewise constant: derivative 0
        if rounding == "nearest":
            rounded = [x.to(torch.bfloat16) for x in xs]
        else:  # one key per stored leaf, by its path in the state (not by which other leaves exist)
            keys = k.stream_keys(seed, count, k.path_salts([paths[i] for i in chosen])) if xs else []
            rounded = k.stochastic_round(xs, keys, straight_through=False)
        for i, x in zip(chosen, rounded):
            leaves[i] = x
        return optree.tree_unflatten(spec, leaves)

    def expand(state: Any, updates: Any) -> Any:
        dtype = compute_dtype
        if dtype is None:
            dtype = torch.float32
            for u in fo_leaves(updates):
                if u.is_floating_point():
                    dtype = torch.promote_types(dtype, u.dtype)
        return optree.tree_map(lambda x: x.to(dtype) if _stored(x) else x, state, none_is_leaf=True)

    def init_fn(params):
        count = steps.zero_count(steps.first_device(params))
        return Bf16State(count=count, inner=store(inner.init(params), count))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        # the expanded state is ours (fresh tensors): inner may overwrite it whatever donate says
        new_updates, new_inner = inner.update(updates, expand(state.inner, updates), params, donate=donate,
                                              **extra)
        # the wider state may have widened the updates: back to the incoming dtypes
        new_updates = tree_map(lambda n, u: n.to(u.dtype) if n.is_floating_point() else n, new_updates, updates)
        count = state.count + 1
        return new_updates, Bf16State(count=count, inner=store(new_inner, count))

    return declare(GradientTransformation(init_fn, update_fn), needs_of_all(inner, at_least=Needs.LEAVES))
