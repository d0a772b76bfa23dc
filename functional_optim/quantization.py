"""Blockwise 8-bit quantisation of optimizer state, with bitsandbytes' dynamic maps.

A tensor is cut into blocks of ``block_size`` consecutive elements (of its flattened
form; the last block may be short). Each block keeps its absolute maximum in float32
and each element an 8-bit code: the index of the entry of a 256-value *quantisation
map* nearest to ``x / absmax``. Dequantising multiplies the map's value by the block's
absmax. The maps are bitsandbytes' *dynamic* data type (a sign, a run of zero bits
giving a decimal exponent from 0 down to -6, and a linear fraction in the rest), which
spends most codes near zero: signed for first moments, unsigned (twice as many
positive values) for second moments.

Everything here is plain torch (table lookups, reductions over blocks): pure, traceable
by ``torch.compile(fullgraph=True)`` and batchable by ``vmap``. Rounding a float32 value
to the nearest map entry takes one lookup in a :class:`NearestTable` (65,536 cells indexed
by the value's top 16 bits) and one comparison, elementwise work that fuses; a search over
the map's midpoints serves float64 and maps the table cannot serve.
:func:`functional_optim.quantized_state` keeps another transform's moments in this form.

References:
  Dettmers et al., *8-bit Optimizers via Block-wise Quantization*, ICLR 2022,
  arXiv:2110.02861; Dettmers, *8-Bit Approximations for Parallelism in Deep Learning*,
  ICLR 2016, arXiv:1511.04561.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["dynamic_map", "quantize_blockwise", "dequantize_blockwise", "ROUNDINGS", "max_block_error",
           "NearestTable", "nearest_table", "dynamic_table"]

ROUNDINGS = ("nearest", "cpu_lut")
_LUT_STEPS = 65535  # bitsandbytes' CPU backend snaps x/absmax to 65536 points of [-1, 1]


@functools.lru_cache(maxsize=None)
def _dynamic_values(signed: bool) -> tuple[float, ...]:
    values: list[float] = [0.0, 1.0]
    for e in range(7):
        count = 2 ** e if signed else 2 ** (e + 1)
        edges = torch.linspace(0.1, 1, count + 1, dtype=torch.float32)
        mids = (10 ** (e - 6)) * ((edges[:-1] + edges[1:]) / 2.0)  # float32, as bitsandbytes rounds them
        values += mids.tolist()
        if signed:
            values += (-(10 ** (e - 6)) * ((edges[:-1] + edges[1:]) / 2.0)).tolist()
    return tuple(sorted(values))


def dynamic_map(signed: bool = True) -> Tensor:
    r"""bitsandbytes' 8-bit dynamic quantisation map: 256 sorted float32 values in [-1, 1].

    For exponents :math:`e = 0, \dots, 6`, the midpoints of
    ``linspace(0.1, 1, n_e + 1)`` (computed in float32) scaled by :math:`10^{e - 6}`, with
    :math:`n_e = 2^e` signed (each value also negated) or :math:`2^{e+1}` unsigned; then
    0 and 1. Signed: 127 negative values down to -0.99297, 0 and 128 positive values up
    to 1. Unsigned: 0 and 255 positive values. The values equal
    ``bitsandbytes.functional.create_dynamic_map(signed)`` bit for bit.

    Args:
      signed: the signed map (first moments) or the unsigned one (second moments).
        Default True.

    Returns:
      A float32 tensor of shape ``(256,)``, sorted ascending.

    References:
      Dettmers et al., *8-bit Optimizers via Block-wise Quantization*, arXiv:2110.02861.

    Example:
      >>> from functional_optim.quantization import dynamic_map
      >>> m = dynamic_map()
      >>> m.shape, round(m[0].item(), 6), m[-1].item(), m[127].item()
      (torch.Size([256]), -0.992969, 1.0, 0.0)
    """
    return torch.tensor(_dynamic_values(bool(signed)), dtype=torch.float32)  # a fresh tensor per call


class NearestTable(NamedTuple):
    r"""Nearest-entry rounding to a sorted map by the top 16 bits of a float32 value.

    The 65,536 float32 values sharing their top 16 bits (sign, exponent and 7 mantissa
    bits) form one cell, 2^-7 wide relative to its values. When no cell holds more than
    one midpoint of consecutive map entries, the nearest entry of ``x`` in cell
    :math:`h` is :math:`\mathrm{low}_h + [x > \mathrm{mid}_h]`.
    """

    low: Tensor  # (65536,) uint8: the code of each cell's values below its midpoint
    mid: Tensor  # (65536,) float32: the midpoint inside the cell (+inf if none)


def nearest_table(qmap: Tensor) -> NearestTable | None:
    r"""The :class:`NearestTable` of a sorted float32 map of at most 256 values, or None if
    some cell holds two midpoints (the map is then denser than 2^-7 relative somewhere;
    :func:`quantize_blockwise` searches the midpoints instead).

    The codes equal ``searchsorted(midpoints, x)`` (a tie goes to the lower entry) for
    every float32 ``x``, NaN excepted.

    Args:
      qmap: the map's values, float32, sorted ascending.

    Example:
      >>> from functional_optim.quantization import dynamic_map, nearest_table
      >>> t = nearest_table(dynamic_map())
      >>> t.low.shape, t.low.dtype
      (torch.Size([65536]), torch.uint8)
    """
    if qmap.dtype != torch.float32 or qmap.dim() != 1 or not 1 < qmap.numel() <= 256:
        raise ValueError(f"qmap must be a 1-D float32 tensor of 2 to 256 values, got {qmap.dtype} {tuple(qmap.shape)}")
    mids = (qmap[:-1] + qmap[1:]) * 0.5
    cells = torch.arange(65536, dtype=torch.int64, device=qmap.device) << 16
    first = cells.to(torch.int32).view(torch.float32)  # wraps to the negative patterns past 0x7fff
    last = (cells | 0xFFFF).to(torch.int32).view(torch.float32)
    low_end, high_end = torch.minimum(first, last), torch.maximum(first, last)
    low = torch.searchsorted(mids, low_end)
    high = torch.searchsorted(mids, high_end)
    finite = ~(torch.isnan(low_end) | torch.isnan(high_end))
    if bool(((high - low > 1) & finite).any()):
        return None
    inf = torch.full_like(low_end, float("inf"))
    mid = torch.where(high > low, mids[low.clamp(max=mids.numel() - 1)], inf)
    return NearestTable(low.to(torch.uint8), mid)


_TABLES: dict[tuple[bool, torch.device], NearestTable] = {}  # a plain dict: read by traced code


def dynamic_table(signed: bool, device: torch.device | str | None = None) -> NearestTable | None:
    """The :class:`NearestTable` of :func:`dynamic_map` ``(signed)`` on ``device``, built
    once per map and device. Inside ``torch.compile`` a table not built before is not
    built (building reads values to the host): the result is then None, and
    :func:`quantize_blockwise` searches the midpoints (the same codes, slower).

    Example:
      >>> import torch
      >>> from functional_optim.quantization import dynamic_map, dynamic_table, quantize_blockwise
      >>> x = torch.tensor([0.5, -1.0, 0.0, 2.0])
      >>> quantize_blockwise(x, dynamic_map(), 2, table=dynamic_table(True))[0]
      tensor([219,   0, 127, 255], dtype=torch.uint8)
    """
    key = (bool(signed), torch.device(device if device is not None else "cpu"))
    table = _TABLES.get(key)
    if table is None and not torch.compiler.is_compiling():
        table = _TABLES[key] = nearest_table(dynamic_map(key[0]).to(key[1]))
    return table


def _nearest_codes(scaled: Tensor, qmap: Tensor, table: NearestTable | None) -> Tensor:
    """Index of the nearest entry of ``qmap`` for each of ``scaled`` (ties to the lower one)."""
    if table is not None and scaled.dtype == torch.float32:
        cell = ((scaled.view(torch.int32) >> 16) & 0xFFFF).to(torch.int64)
        return table.low[cell].to(torch.int64) + (scaled > table.mid[cell]).to(torch.int64)
    mids = ((qmap[:-1] + qmap[1:]) * 0.5).to(scaled.dtype)
    return torch.searchsorted(mids, scaled.contiguous())


def _check(block_size: int, rounding: str) -> None:
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"Invalid block_size: {block_size!r} (expected a positive int)")
    if rounding not in ROUNDINGS:
        raise ValueError(f"Invalid rounding: {rounding!r} (expected one of {ROUNDINGS})")


def _blocks(x: Tensor, block_size: int) -> Tensor:
    """``x`` flattened, zero-padded to whole blocks, as ``(nblocks, block_size)``."""
    flat = x.reshape(-1)
    pad = -flat.shape[0] % block_size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block_size)


def quantize_blockwise(x: Tensor, qmap: Tensor, block_size: int = 256,
                       rounding: str = "nearest", *, table: NearestTable | None = None) -> tuple[Tensor, Tensor]:
    r"""8-bit codes and per-block absolute maxima of ``x`` (bitsandbytes' blockwise scheme).

    Per block :math:`B` of ``block_size`` consecutive elements of ``x.reshape(-1)``, in
    float32:

    .. math::

        a_B &= \max_{i \in B} |x_i| \\
        s_i &= x_i \cdot (1 / a_B) \quad (0 \text{ where } a_B = 0) \\
        c_i &= \#\{j : (q_j + q_{j+1}) / 2 < s_i\} \quad \text{(the nearest map value; a tie
              goes to the lower one)}

    With ``rounding="cpu_lut"``, :math:`s_i` is first snapped to bitsandbytes' CPU grid:
    :math:`k = \lfloor (\mathrm{clamp}(s_i, -1, 1) + 1) \cdot 0.5 \cdot 65535 + 0.5 \rfloor`,
    :math:`s_i = -1 + 2k / 65535` (what its CPU kernels do since 0.4x: a table of 65536
    entries instead of a search; the codes then equal theirs bit for bit). ``"nearest"``
    is the scheme as documented and as its CUDA kernels compute it. A block whose absmax
    is 0 gets code 0 everywhere (it dequantises to 0, as in bitsandbytes).

    Error bound (nearest): :math:`|x_i - q_{c_i} a_B| \le \tfrac{1}{2} \max_j (q_{j+1} - q_j)
    \cdot a_B`, i.e. :math:`0.0070313\, a_B` for the signed dynamic map and
    :math:`0.0035157\, a_B` for the unsigned one (:func:`max_block_error`); ``cpu_lut``
    adds at most one grid step, :math:`2 a_B / 65535`.

    Args:
      x: a floating tensor (any shape; computed in float32, or in float64 for float64
        ``x``: then ``absmax`` is float64 too).
      qmap: the 256 sorted map values (:func:`dynamic_map`), float32.
      block_size: elements per block, > 0. Default 256 (bitsandbytes' optimizers).
      rounding: ``"nearest"`` (default) or ``"cpu_lut"``.
      table: ``qmap``'s :func:`nearest_table` (e.g. :func:`dynamic_table`), for fast
        float32 rounding: the same codes as without it. Default None (a search over the
        midpoints).

    Returns:
      ``(codes, absmax)``: uint8 codes shaped like ``x``, float32 absmax of shape
      ``(ceil(x.numel() / block_size),)``.

    References:
      Dettmers et al., *8-bit Optimizers via Block-wise Quantization*, arXiv:2110.02861.

    Example:
      >>> import torch
      >>> from functional_optim.quantization import dynamic_map, quantize_blockwise
      >>> codes, absmax = quantize_blockwise(torch.tensor([0.5, -1.0, 0.0, 2.0]), dynamic_map(), 2)
      >>> codes, absmax
      (tensor([219,   0, 127, 255], dtype=torch.uint8), tensor([1., 2.]))
    """
    _check(block_size, rounding)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # float64 state stays exact
    blocks = _blocks(x.to(dtype), block_size)
    absmax = blocks.abs().amax(dim=1)
    nonzero = absmax > 0
    inv = 1.0 / torch.where(nonzero, absmax, torch.ones_like(absmax))  # reciprocal, then multiply (as bnb)
    scaled = blocks * inv.unsqueeze(1)
    if rounding == "cpu_lut":
        index = ((scaled.clamp(-1.0, 1.0) + 1.0) * 0.5 * _LUT_STEPS + 0.5).to(torch.int32)
        scaled = (2.0 * index.to(dtype)) / _LUT_STEPS + (-1.0)
    codes = _nearest_codes(scaled, qmap, table)
    # cast before cutting the padding off: torch 2.13's inductor miscompiles the other order
    codes = torch.where(nonzero.unsqueeze(1), codes, torch.zeros_like(codes)).to(torch.uint8)
    return codes.reshape(-1)[:x.numel()].reshape(x.shape), absmax


def dequantize_blockwise(codes: Tensor, absmax: Tensor, qmap: Tensor, block_size: int = 256,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    r"""The values :math:`x_i = q_{c_i} \cdot a_B` of :func:`quantize_blockwise`'s output
    (computed in ``absmax``'s dtype: float32 as bitsandbytes does, then cast to ``dtype``).

    Args:
      codes: uint8 codes (any shape).
      absmax: float32 per-block maxima, ``(ceil(codes.numel() / block_size),)``.
      qmap: the map the codes index (256 values).
      block_size: elements per block, > 0. Default 256.
      dtype: the result's dtype. Default float32.

    Example:
      >>> import torch
      >>> from functional_optim.quantization import dequantize_blockwise, dynamic_map
      >>> codes = torch.tensor([219, 0, 127, 255], dtype=torch.uint8)
      >>> dequantize_blockwise(codes, torch.tensor([1.0, 2.0]), dynamic_map(), 2)
      tensor([ 0.5008, -0.9930,  0.0000,  2.0000])
    """
    _check(block_size, "nearest")
    values = _blocks(qmap[codes.to(torch.int64)].to(absmax.dtype), block_size) * absmax.unsqueeze(1)
    return values.reshape(-1)[:codes.numel()].reshape(codes.shape).to(dtype)


def max_block_error(qmap: Tensor) -> float:
    r"""The worst relative error of nearest rounding with ``qmap``: half its largest gap,
    :math:`\tfrac{1}{2} \max_j (q_{j+1} - q_j)`; an element's error is at most this
    times its block's absmax.

    Example:
      >>> from functional_optim.quantization import dynamic_map, max_block_error
      >>> round(max_block_error(dynamic_map(True)), 7), round(max_block_error(dynamic_map(False)), 7)
      (0.0070313, 0.0035157)
    """
    return float((qmap[1:] - qmap[:-1]).max()) / 2
