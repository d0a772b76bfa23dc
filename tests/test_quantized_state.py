"""Blockwise 8-bit quantisation (``functional_optim.quantization``) and ``fo.quantized_state``.

Reference values are bitsandbytes 0.50.2's (``reference/bnb.pt``, recorded by
``reference/generate_bnb.py``; bitsandbytes is never imported here).
"""

from __future__ import annotations

import io
import os

import optree
import pytest
import torch

import functional_optim as fo
from adapters.bnb import AdamW8bit
from functional_optim.quantization import (ROUNDINGS, dequantize_blockwise, dynamic_map, dynamic_table,
                                           max_block_error, nearest_table, quantize_blockwise)

HERE = os.path.dirname(os.path.abspath(__file__))
REF = torch.load(os.path.join(HERE, "reference", "bnb.pt"), weights_only=True)
# bitsandbytes' bound, half the largest gap of each map (times the block's absmax)
SIGNED_BOUND, UNSIGNED_BOUND = 0.0070313, 0.0035157


@pytest.mark.parametrize("sign", ["signed", "unsigned"])
def test_dynamic_maps_equal_bitsandbytes_bit_for_bit(sign):
    qmap = dynamic_map(sign == "signed")
    assert torch.equal(qmap, REF["maps"][sign])
    assert qmap.dtype == torch.float32 and bool((qmap[1:] > qmap[:-1]).all())


@pytest.mark.parametrize("key", ["signed_256", "signed_4096", "unsigned_256", "unsigned_4096"])
def test_cpu_lut_codes_and_absmax_equal_bitsandbytes_cpu(key):
    case = REF["quant"][key]
    sign, block = key.split("_")
    qmap = dynamic_map(sign == "signed")
    codes, absmax = quantize_blockwise(case["x"], qmap, int(block), "cpu_lut")
    assert codes.dtype == torch.uint8 and codes.shape == case["x"].shape
    assert torch.equal(codes, case["codes"]) and torch.equal(absmax, case["absmax"])
    # bitsandbytes' dequantisation is map value times absmax, in float32
    expected = (qmap[case["codes"].long()].view(-1)[:256 * (case["x"].numel() // 256)].view(-1, 256)
                * case["absmax"][:case["x"].numel() // 256, None]).view(-1) if block == "256" else None
    if expected is not None:
        assert torch.equal(dequantize_blockwise(codes, absmax, qmap, 256)[:expected.numel()], expected)


@pytest.mark.parametrize("signed", [True, False])
def test_nearest_table_rounds_as_the_midpoint_search(signed):
    qmap = dynamic_map(signed)
    mids = (qmap[:-1] + qmap[1:]) * 0.5
    table = nearest_table(qmap)
    assert table.low.shape == table.mid.shape == (65536,) and table.low.dtype == torch.uint8
    # every cell's two ends, every midpoint and its float32 neighbours, and random values
    cells = torch.arange(65536, dtype=torch.int64) << 16
    ends = torch.cat([cells.to(torch.int32), (cells | 0xFFFF).to(torch.int32)]).view(torch.float32)
    near = torch.cat([mids, torch.nextafter(mids, torch.tensor(-2.0)), torch.nextafter(mids, torch.tensor(2.0))])
    gen = torch.Generator().manual_seed(0)
    rand = torch.randn(200_000, generator=gen) * torch.rand(200_000, generator=gen) ** 6
    for x in (ends[~ends.isnan()], near, rand / rand.abs().max()):
        x = x if signed else x.abs()
        codes, _ = quantize_blockwise(x, qmap, x.numel(), table=table)
        searched, _ = quantize_blockwise(x, qmap, x.numel())
        assert torch.equal(codes, searched)
    assert torch.equal(dynamic_table(signed).mid, table.mid)


def test_nearest_table_declines_a_map_denser_than_its_cells():
    dense = torch.linspace(0.5, 0.52, 256)  # gaps of 8e-5, cells of 2^-8 near 0.5
    assert nearest_table(dense) is None
    x = torch.linspace(0.49, 0.53, 1000)
    codes, absmax = quantize_blockwise(x, dense, 1000)  # the midpoint search serves it
    brute = (x[:, None] / absmax - dense[None, :]).abs().argmin(dim=1)
    assert torch.equal(codes.long(), brute)
    with pytest.raises(ValueError, match="qmap"):
        nearest_table(dense.double())


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_error_is_within_half_the_largest_gap_per_block(signed, rounding):
    x = REF["quant"]["signed_256" if signed else "unsigned_256"]["x"]
    qmap = dynamic_map(signed)
    bound = SIGNED_BOUND if signed else UNSIGNED_BOUND
    assert max_block_error(qmap) == pytest.approx(bound, abs=1e-7)
    codes, absmax = quantize_blockwise(x, qmap, 256, rounding)
    back = dequantize_blockwise(codes, absmax, qmap, 256)
    n = x.numel()
    scale = absmax.repeat_interleave(256)[:n]
    ratio = ((back - x).abs() / torch.where(scale > 0, scale, 1.0))
    slack = 1e-7 + (1.0 / 65535 if rounding == "cpu_lut" else 0.0)  # float32 products; the CPU grid step
    assert ratio.max() <= bound + slack
    assert ratio.max() >= 0.8 * bound  # the bound is (nearly) attained: it is the right one
    assert torch.equal(back[256:512], torch.zeros(256))  # an all-zero block stays 0 (absmax 0)
    if rounding == "nearest":
        # every code is the nearest map value (ties aside): the error is the least possible
        live = scale > 0  # (an all-zero block takes code 0 by convention)
        s = (x[live] / scale[live]).double()
        best = (s[:, None] - qmap.double()[None, :]).abs().min(dim=1).values
        mine = (s - qmap.double()[codes[live].long()]).abs()
        assert (mine - best).abs().max() <= 1e-6


def test_small_leaves_counters_and_scalars_keep_full_precision():
    tx = fo.quantized_state(fo.adam(1e-3), min_size=64, block_size=16)
    state = tx.init({"w": torch.zeros(8, 10), "b": torch.zeros(10)})
    adam_state = state.inner[0]
    assert adam_state.mu["w"].dtype == torch.uint8 and adam_state.nu["w"].dtype == torch.uint8
    assert state.absmax[0].mu["w"].shape == (5,) and state.absmax[0].mu["b"] is None
    assert adam_state.mu["b"].dtype == torch.float32 and adam_state.count["w"].dtype == torch.int32
    assert torch.equal(state.qmaps.signed, dynamic_map(True))
    assert torch.equal(state.qmaps.unsigned, dynamic_map(False))


def _regression(steps: int):
    gen = torch.Generator().manual_seed(0)
    p0 = {"w": torch.randn(64, 80, generator=gen), "b": torch.randn(80, generator=gen)}
    target = {k: torch.randn(v.shape, generator=gen) for k, v in p0.items()}
    noise = [{k: torch.randn(v.shape, generator=gen) for k, v in p0.items()} for _ in range(steps)]
    return p0, target, noise


def _train(tx, p0, target, noise):
    p, s = dict(p0), tx.init(p0)
    for n in noise:
        g = {k: p[k] - target[k] + 0.5 * n[k] for k in p}
        u, s = tx.update(g, s, p)
        p = fo.apply_updates(p, u)
    return p, s


def test_adamw8bit_tracks_fp32_adamw_over_100_steps():
    p0, target, noise = _regression(100)
    p8, s8 = _train(fo.bitsandbytes.adamw8bit(1e-2), p0, target, noise)
    p32, _ = _train(fo.bitsandbytes.adamw(1e-2), p0, target, noise)
    assert s8.inner[0].mu["w"].dtype == torch.uint8  # 5120 elements: quantised
    travelled = (p32["w"] - p0["w"]).norm()
    # measured: 2.42% of the distance travelled, 0.077 at worst per element (travel ~1)
    assert (p8["w"] - p32["w"]).norm() <= 0.03 * travelled
    assert (p8["w"] - p32["w"]).abs().max() <= 0.1
    # both converge alike: distance to the target within 1%
    d8, d32 = (p8["w"] - target["w"]).norm(), (p32["w"] - target["w"]).norm()
    assert abs(d8 - d32) <= 0.01 * d32
    assert torch.equal(p8["b"], p32["b"])  # 80 elements: 32-bit state, the same math


def test_next_update_from_dequantized_state_equals_the_8bit_update():
    p0, target, noise = _regression(6)
    tx8, tx32 = fo.bitsandbytes.adamw8bit(1e-2), fo.bitsandbytes.adamw(1e-2)
    p, s = _train(tx8, p0, target, noise[:5])
    g = {k: p[k] - target[k] for k in p}
    full = fo.dequantize_state(s)  # to full precision: a 32-bit AdamW continues from it
    assert full[0].mu["w"].dtype == torch.float32
    u8, _ = tx8.update(g, s, p)
    u32, _ = tx32.update(g, full, p)
    assert all(torch.equal(u8[k], u32[k]) for k in p)
    # and back: quantising a full-precision state gives the codes the wrapper keeps
    again = fo.quantize_state(full)
    assert torch.equal(again.absmax[0].nu["w"], s.absmax[0].nu["w"])
    assert torch.equal(again.inner[0].nu["w"], s.inner[0].nu["w"])


def test_functional_state_saves_and_loads_with_weights_only():
    p0, target, noise = _regression(8)
    tx = fo.bitsandbytes.ademamix8bit(1e-2)
    p, s = _train(tx, p0, target, noise[:4])
    leaves, treedef = optree.tree_flatten(s, none_is_leaf=True)
    buf = io.BytesIO()
    torch.save(leaves, buf)  # codes, absmax and maps are plain tensors
    buf.seek(0)
    loaded = treedef.unflatten(torch.load(buf, weights_only=True))
    a = _continue(tx, p, s, target, noise[4:])
    b = _continue(tx, p, loaded, target, noise[4:])
    assert all(torch.equal(a[k], b[k]) for k in p)


def _continue(tx, p, s, target, noise):
    for n in noise:
        g = {k: p[k] - target[k] + 0.5 * n[k] for k in p}
        u, s = tx.update(g, s, p)
        p = fo.apply_updates(p, u)
    return p


def test_adapter_state_dict_round_trip_is_exact():
    gen = torch.Generator().manual_seed(3)
    shapes = [(70, 61), (5,)]
    start = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(6)]
    ps = [torch.nn.Parameter(x.clone()) for x in start]
    opt = AdamW8bit(ps, lr=1e-2)
    for g in grads[:3]:
        for p, x in zip(ps, g):
            p.grad = x.clone()
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = AdamW8bit(qs, lr=0.5)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.param_groups[0]["lr"] == 1e-2
    for g in grads[3:]:
        for pair in ((ps, opt), (qs, opt2)):
            for p, x in zip(pair[0], g):
                p.grad = x.clone()
            pair[1].step()
    assert all(torch.equal(a, b) for a, b in zip(ps, qs))
    sa, sb = opt.state_dict()["state"], opt2.state_dict()["state"]
    for i in sa:
        qa, qb = sa[i]["__bnb_optimizer_quant_state__"], sb[i]["__bnb_optimizer_quant_state__"]
        assert sa[i]["step"] == sb[i]["step"] == 6 and qa.keys() == qb.keys()
        assert all(torch.equal(qa[k], qb[k]) for k in qa)
    assert sa[0]["__bnb_optimizer_quant_state__"]["state1"].dtype == torch.uint8
    assert sa[1]["__bnb_optimizer_quant_state__"]["state1"].dtype == torch.float32


def test_bad_arguments_raise_naming_them():
    with pytest.raises(ValueError, match="block_size"):
        fo.quantized_state(fo.adam(), block_size=0)
    with pytest.raises(ValueError, match="min_size"):
        fo.quantized_state(fo.adam(), min_size=0)
    with pytest.raises(ValueError, match="rounding"):
        fo.quantized_state(fo.adam(), rounding="floor")
    with pytest.raises(TypeError, match="unsigned_fields"):
        fo.quantized_state(fo.adam(), unsigned_fields="nu")
    with pytest.raises(ValueError, match="rounding"):
        quantize_blockwise(torch.ones(3), dynamic_map(), 2, "up")
    with pytest.raises(TypeError, match="QuantizedState"):
        fo.dequantize_state({"mu": torch.ones(2)})
