"""``quantized_state``: keep any transform's moments as 8-bit blockwise codes between
updates (bitsandbytes' 8-bit optimizers, for every transform here)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, NamedTuple

import optree
import torch

from ..base import GradientTransformation, Needs, declare
from ..quantization import ROUNDINGS, dequantize_blockwise, dynamic_map, dynamic_table, quantize_blockwise

__all__ = ["QuantizationMaps", "QuantizedState", "quantized_state", "quantize_state", "dequantize_state",
           "UNSIGNED_FIELDS"]

# state fields that hold non-negative moments: quantised with the unsigned map
UNSIGNED_FIELDS = frozenset({"nu", "nu_max", "exp_avg_sq", "max_exp_avg_sq"})


class QuantizationMaps(NamedTuple):
    """The two 256-value maps of :func:`~functional_optim.quantization.dynamic_map`."""

    signed: torch.Tensor  # (256,) float32: first moments (bitsandbytes' ``qmap1``)
    unsigned: torch.Tensor  # (256,) float32: second moments (``qmap2``)


class QuantizedState(NamedTuple):
    """State of :func:`quantized_state`."""

    inner: Any  # the inner transform's state, each quantised leaf replaced by its uint8 codes (same shape)
    absmax: Any  # tree like ``inner``: float32 (float64 for float64 leaves) (ceil(numel / block_size),) at the
    #              quantised leaves: per-block maxima; None at every other leaf
    qmaps: QuantizationMaps  # the maps the codes index


def _check_config(block_size: Any, min_size: Any, rounding: Any, unsigned_fields: Any) -> None:
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"Invalid block_size: {block_size!r} (expected a positive int)")
    if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 1:
        raise ValueError(f"Invalid min_size: {min_size!r} (expected a positive int)")
    if rounding not in ROUNDINGS:
        raise ValueError(f"Invalid rounding: {rounding!r} (expected one of {ROUNDINGS})")
    if isinstance(unsigned_fields, str) or not all(isinstance(f, str) for f in unsigned_fields):
        raise TypeError(f"unsigned_fields must be a collection of field names, got {unsigned_fields!r}")


def _field_names(tree: Any, paths: list[tuple]) -> list[str | None]:
    """For each leaf path, the name of the innermost NamedTuple field holding it."""
    out = []
    for path in paths:
        node, field = tree, None
        for key in path:
            if isinstance(node, tuple) and hasattr(node, "_fields"):
                field = node._fields[key]
            node = node[key]
        out.append(field)
    return out


def _leaves(tree: Any) -> tuple[list[Any], Any, list[str | None]]:
    leaves, treedef = optree.tree_flatten(tree, none_is_leaf=True)
    paths = optree.tree_paths(tree, none_is_leaf=True)
    return leaves, treedef, _field_names(tree, paths)


def _quantizable(leaf: Any, min_size: int) -> bool:
    return (isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.dim() > 0
            and leaf.numel() >= min_size)


def _qmap(maps: QuantizationMaps, field: str | None, unsigned_fields: Collection[str]) -> torch.Tensor:
    return maps.unsigned if field in unsigned_fields else maps.signed


def _quantize(leaf: torch.Tensor, maps: QuantizationMaps, field: str | None, unsigned_fields: Collection[str],
              block_size: int, rounding: str) -> tuple[torch.Tensor, torch.Tensor]:
    # the maps are bitsandbytes' dynamic maps: their rounding tables are built once per device
    signed = field not in unsigned_fields
    table = dynamic_table(signed, leaf.device)
    return quantize_blockwise(leaf, _qmap(maps, field, unsigned_fields), block_size, rounding, table=table)


def quantize_state(inner_state: Any, *, block_size: int = 256, min_size: int = 4096,
                   unsigned_fields: Collection[str] = UNSIGNED_FIELDS,
                   rounding: str = "nearest") -> QuantizedState:
    """A full-precision state of some transform as :func:`quantized_state` keeps it.

    Every floating leaf with at least one dimension and ``min_size`` elements or more is
    quantised blockwise; the rest stays as it is.

    Args:
      inner_state: the transform's state (e.g. a checkpoint saved in full precision).
      block_size: elements per block. Default 256.
      min_size: smallest leaf quantised. Default 4096 (bitsandbytes' ``min_8bit_size``).
      unsigned_fields: state field names quantised with the unsigned map. Default
        :data:`UNSIGNED_FIELDS` (``nu``, ``nu_max``, ``exp_avg_sq``, ``max_exp_avg_sq``).
      rounding: ``"nearest"`` (default) or ``"cpu_lut"`` (see
        :func:`~functional_optim.quantization.quantize_blockwise`).

    Example:
      >>> import torch, functional_optim as fo
      >>> s = fo.scale_by_adam().init({"w": torch.ones(300)})
      >>> q = fo.quantize_state(s, min_size=256)
      >>> q.inner.mu["w"].dtype, q.absmax.mu["w"].shape, q.absmax.count["w"]
      (torch.uint8, torch.Size([2]), None)
    """
    _check_config(block_size, min_size, rounding, unsigned_fields)
    leaves, treedef, fields = _leaves(inner_state)
    device = next((x.device for x in leaves if isinstance(x, torch.Tensor)), None)
    maps = QuantizationMaps(dynamic_map(True).to(device), dynamic_map(False).to(device))
    codes, absmax = [], []
    for leaf, field in zip(leaves, fields):
        if _quantizable(leaf, min_size):
            c, a = _quantize(leaf, maps, field, unsigned_fields, block_size, rounding)
            codes.append(c)
            absmax.append(a)
        else:
            codes.append(leaf)
            absmax.append(None)
    return QuantizedState(treedef.unflatten(codes), treedef.unflatten(absmax), maps)


def dequantize_state(state: QuantizedState, *, block_size: int = 256,
                     unsigned_fields: Collection[str] = UNSIGNED_FIELDS,
                     dtype: torch.dtype = torch.float32) -> Any:
    """The inner transform's state in full precision (the quantised leaves in ``dtype``).

    Args:
      state: a :class:`QuantizedState`.
      block_size: the block size it was quantised with. Default 256.
      unsigned_fields: the fields quantised with the unsigned map. Default
        :data:`UNSIGNED_FIELDS`.
      dtype: dtype of the dequantised leaves. Default float32.

    Example:
      >>> import torch, functional_optim as fo
      >>> s = fo.scale_by_adam().init({"w": torch.full((300,), 0.5)})
      >>> s = s._replace(mu={"w": torch.full((300,), 0.5)})
      >>> fo.dequantize_state(fo.quantize_state(s, min_size=256)).mu["w"][:2]
      tensor([0.5000, 0.5000])
    """
    if not isinstance(state, QuantizedState):
        raise TypeError(f"state must be a QuantizedState, got {type(state).__name__}")
    leaves, treedef, fields = _leaves(state.inner)
    absmax = treedef.flatten_up_to(state.absmax)
    out = [leaf if a is None else
           dequantize_blockwise(leaf, a, _qmap(state.qmaps, f, unsigned_fields), block_size, dtype)
           for leaf, a, f in zip(leaves, absmax, fields)]
    return treedef.unflatten(out)


def _requantize(new_inner: Any, old: QuantizedState, block_size: int, unsigned_fields: Collection[str],
                rounding: str) -> QuantizedState:
    """``new_inner`` quantised at the leaves ``old`` holds quantised (same structure)."""
    leaves, treedef, fields = _leaves(new_inner)
    try:
        was = treedef.flatten_up_to(old.absmax)
    except (ValueError, TypeError) as err:
        raise ValueError("the inner transform changed its state's structure; quantized_state needs "
                         "the same structure at every update") from err
    codes, absmax = [], []
    for leaf, a, field in zip(leaves, was, fields):
        if a is None:
            codes.append(leaf)
            absmax.append(None)
        else:
            c, m = _quantize(leaf, old.qmaps, field, unsigned_fields, block_size, rounding)
            codes.append(c)
            absmax.append(m)
    return QuantizedState(treedef.unflatten(codes), treedef.unflatten(absmax), old.qmaps)


def _compute_dtype(updates: Any) -> torch.dtype:
    leaves = [x for x in optree.tree_leaves(updates) if isinstance(x, torch.Tensor)]
    return torch.float64 if any(x.dtype == torch.float64 for x in leaves) else torch.float32


def quantized_state(inner: GradientTransformation, *, block_size: int = 256, min_size: int = 4096,
                    unsigned_fields: Collection[str] = UNSIGNED_FIELDS,
                    rounding: str = "nearest") -> GradientTransformation:
    r"""Keep ``inner``'s moments as 8-bit blockwise codes between updates (bitsandbytes'
    8-bit optimizers, for any transform).

    Between updates each floating state leaf of ``inner`` with at least one dimension and
    ``min_size`` elements or more is held as uint8 codes (same shape) plus one float32
    absmax per block of ``block_size`` elements (float64 for float64 state) (:func:`quantize_state`); smaller leaves,
    counters and scalars stay as ``inner`` keeps them. Each update, within the same
    function (so a compiled step fuses the three):

    .. math::

        s &= \operatorname{dequantize}(c, a) \quad \text{(float32; float64 for float64 updates)} \\
        u, s' &= \operatorname{inner.update}(g, s) \\
        c', a' &= \operatorname{quantize}(s') \quad \text{(per block: } a' = \max|s'|,\
               c' = \text{nearest map value to } s' / a')

    The update :math:`u` is computed from the full-precision :math:`s'`, as bitsandbytes
    does; only what is kept is quantised. Rounding to the nearest map value takes one
    lookup in the map's :class:`~functional_optim.quantization.NearestTable` and one
    comparison per float32 element (float64 state searches the midpoints); the state's
    ``qmaps`` are therefore bitsandbytes' dynamic maps, as :func:`quantize_state` makes
    them. Fields named in ``unsigned_fields`` use the unsigned dynamic map, every other
    quantised leaf the signed one. The worst error of
    a kept value is :math:`0.0070313\,a` (signed) or :math:`0.0035157\,a` (unsigned) with
    :math:`a` its block's absmax (:func:`~functional_optim.quantization.max_block_error`).
    The codes are integers: derivatives flow through the update's full-precision math
    and through the absmax, not through the rounding (the kept moments are constants of
    later steps up to their scale).

    Args:
      inner: the transform whose state is quantised.
      block_size: elements per block (> 0). Default 256 (bitsandbytes' optimizers).
      min_size: smallest leaf quantised (> 0). Default 4096 (bitsandbytes'
        ``min_8bit_size``).
      unsigned_fields: names of state fields holding non-negative moments. Default
        :data:`UNSIGNED_FIELDS`.
      rounding: ``"nearest"`` (default: the documented scheme, bitsandbytes' CUDA
        kernels) or ``"cpu_lut"`` (bitsandbytes' CPU kernels, bit for bit).

    References:
      Dettmers et al., *8-bit Optimizers via Block-wise Quantization*, ICLR 2022,
      arXiv:2110.02861.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.quantized_state(fo.adamw(1e-3), min_size=256)
      >>> params = {"w": torch.ones(1000), "b": torch.ones(3)}
      >>> state = tx.init(params)
      >>> u, state = tx.update({"w": torch.ones(1000), "b": torch.ones(3)}, state, params)
      >>> [leaf.dtype for leaf in (state.inner[0].mu["w"], state.inner[0].mu["b"])]
      [torch.uint8, torch.float32]
    """
    _check_config(block_size, min_size, rounding, unsigned_fields)
    unsigned_fields = frozenset(unsigned_fields)

    def init_fn(params):
        return quantize_state(inner.init(params), block_size=block_size, min_size=min_size,
                              unsigned_fields=unsigned_fields, rounding=rounding)

    def update_fn(updates, state, params=None, **extra):
        full = dequantize_state(state, block_size=block_size, unsigned_fields=unsigned_fields,
                                dtype=_compute_dtype(updates))
        out, new_inner = inner.update(updates, full, params, **extra)
        # moments in float32 (bitsandbytes' compute dtype) must not promote bf16/fp16 updates
        out = optree.tree_map(lambda u, g: u if u is None or g is None or u.dtype == g.dtype else u.to(g.dtype),
                              out, updates, none_is_leaf=True)
        return out, _requantize(new_inner, state, block_size, unsigned_fields, rounding)

    # blocks are cut from each leaf's own elements: the transform must see whole leaves
    return declare(GradientTransformation(init_fn, update_fn), Needs.MATRIX)
