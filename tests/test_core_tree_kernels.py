"""Tree utilities, the kernel layer and apply_updates."""

from __future__ import annotations

import pytest
import torch

import functional_optim as fo
from functional_optim import kernels as k

DT = torch.float64


def test_tree_map_and_arithmetic_keep_none_leaves():
    a = {"x": torch.tensor([1.0, 2.0], dtype=DT), "y": None, "z": [torch.tensor(3.0, dtype=DT)]}
    b = {"x": torch.tensor([0.5, -1.0], dtype=DT), "y": torch.ones(1, dtype=DT), "z": [torch.tensor(1.0, dtype=DT)]}
    assert fo.tree.map(lambda t: t * 2, a)["y"] is None
    assert torch.equal(fo.tree.add(a, b)["x"], torch.tensor([1.5, 1.0], dtype=DT))
    assert torch.equal(fo.tree.sub(a, b)["z"][0], torch.tensor(2.0, dtype=DT))
    assert torch.equal(fo.tree.add_scale(a, 2.0, b)["x"], torch.tensor([2.0, 0.0], dtype=DT))
    assert torch.equal(fo.tree.scale(a, torch.tensor(3.0, dtype=DT))["z"][0], torch.tensor(9.0, dtype=DT))
    assert fo.tree.add(a, b)["y"] is None
    assert fo.tree.vdot(a, b).item() == pytest.approx(0.5 - 2.0 + 3.0)


def test_norms_and_casts():
    tree = {"a": torch.tensor([3.0, -4.0], dtype=DT), "b": torch.tensor([[12.0]], dtype=DT), "c": None}
    assert fo.tree.norm(tree).item() == pytest.approx(13.0)
    assert fo.tree.global_norm(tree).item() == pytest.approx(13.0)
    assert fo.tree.norm(tree, squared=True).item() == pytest.approx(169.0)
    assert fo.tree.norm(tree, 1).item() == pytest.approx(19.0)
    assert fo.tree.norm(tree, "inf").item() == pytest.approx(12.0)
    with pytest.raises(ValueError, match="ord"):
        fo.tree.norm(tree, 3)
    z = fo.tree.zeros_like(tree, dtype=torch.float32)
    assert z["a"].dtype == torch.float32 and z["c"] is None and z["b"].abs().sum() == 0
    assert fo.tree.cast({"i": torch.ones(1, dtype=torch.int32), "f": torch.ones(1)}, DT)["i"].dtype == torch.int32
    complex_tree = {"z": torch.tensor([3 + 4j], dtype=torch.complex128)}
    assert fo.tree.norm(complex_tree).item() == pytest.approx(5.0)


def test_get_and_set_by_name():
    tx = fo.named_chain(("clip", fo.clip_by_global_norm(1.0)), ("adam", fo.adam(lr=0.1)))
    params = {"w": torch.zeros(2, dtype=DT)}
    _, state = tx.update({"w": torch.tensor([3.0, 4.0], dtype=DT)}, tx.init(params), params)
    assert fo.tree.get(state, "global_norm").item() == pytest.approx(5.0)
    assert fo.tree.get(state, "clip/global_norm").item() == pytest.approx(5.0)
    assert int(fo.tree.get(state, "count")["w"]) == 1
    with pytest.raises(KeyError, match="no node"):
        fo.tree.get(state, "nothing")
    assert fo.tree.get(state, "nothing", default=None) is None
    paths = [p for p, _ in fo.tree.get_all_with_path(state, "mu")]
    assert paths == ["adam/0/mu"]  # fo.adam is chain(scale_by_adam, scale_by_learning_rate)
    new = fo.tree.set(state, "global_norm", torch.tensor(0.5, dtype=DT))
    assert fo.tree.get(new, "global_norm").item() == 0.5
    assert fo.tree.get(state, "global_norm").item() == pytest.approx(5.0)  # the input is unchanged
    two = fo.chain(fo.trace(0.9), fo.ema(0.5))
    with pytest.raises(KeyError, match="ambiguous"):
        fo.tree.get(two.init(params), "count")


def _lists():
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(3, generator=gen, dtype=DT), torch.randn(2, 2, generator=gen, dtype=DT)]
    ys = [torch.randn(3, generator=gen, dtype=DT), torch.randn(2, 2, generator=gen, dtype=DT)]
    zs = [torch.rand(3, generator=gen, dtype=DT) + 0.5, torch.rand(2, 2, generator=gen, dtype=DT) + 0.5]
    return xs, ys, zs


KERNELS = {
    "add": (lambda xs, ys, zs, **kw: k.add(xs, ys, 0.5, **kw), lambda x, y, z: x + 0.5 * y),
    "add_tensor_alpha": (lambda xs, ys, zs, **kw: k.add(xs, ys, torch.tensor(0.5, dtype=DT), **kw),
                         lambda x, y, z: x + 0.5 * y),
    "mul_scalar_list": (lambda xs, ys, zs, **kw: k.mul(xs, [torch.tensor(2.0, dtype=DT), 3.0], **kw), None),
    "lerp": (lambda xs, ys, zs, **kw: k.lerp(xs, ys, 0.1, **kw), lambda x, y, z: x + 0.1 * (y - x)),
    "addcmul": (lambda xs, ys, zs, **kw: k.addcmul(xs, ys, zs, 0.3, **kw), lambda x, y, z: x + 0.3 * y * z),
    "addcmul_tensor": (lambda xs, ys, zs, **kw: k.addcmul(xs, ys, zs, torch.tensor(0.3, dtype=DT), **kw),
                       lambda x, y, z: x + 0.3 * y * z),
    "addcdiv": (lambda xs, ys, zs, **kw: k.addcdiv(xs, ys, zs, 0.3, **kw), lambda x, y, z: x + 0.3 * y / z),
    "div": (lambda xs, ys, zs, **kw: k.div(xs, zs, **kw), lambda x, y, z: x / z),
    "maximum": (lambda xs, ys, zs, **kw: k.maximum(xs, ys, **kw), lambda x, y, z: torch.maximum(x, y)),
    "sqrt": (lambda xs, ys, zs, **kw: k.sqrt(zs, **kw), lambda x, y, z: z.sqrt()),
    "clamp": (lambda xs, ys, zs, **kw: k.clamp(xs, -0.5, 0.5, **kw), lambda x, y, z: x.clamp(-0.5, 0.5)),
    "sign": (lambda xs, ys, zs, **kw: k.sign(xs, **kw), lambda x, y, z: x.sign()),
}


@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "foreach"])
@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_pure_donate_and_reference(name, foreach):
    run, reference = KERNELS[name]
    fo.kernels.set_foreach(foreach)
    try:
        xs, ys, zs = _lists()
        originals = [x.clone() for x in xs + ys + zs]
        pure = run(xs, ys, zs)
        assert all(torch.equal(a, b) for a, b in zip(xs + ys + zs, originals))  # pure: inputs untouched
        if reference is not None:
            for p, x, y, z in zip(pure, xs, ys, zs):
                torch.testing.assert_close(p, reference(x, y, z), rtol=1e-14, atol=1e-15)
        first = zs if name == "sqrt" else xs
        pointers = [t.data_ptr() for t in first]
        donated = run(xs, ys, zs, donate=True)
        assert [t.data_ptr() for t in donated] == pointers  # written into the first list's buffers
        for a, b in zip(donated, pure):
            torch.testing.assert_close(a, b, rtol=1e-15, atol=0)
    finally:
        fo.kernels.set_foreach(None)


REDIRECTED = {
    **{name: run for name, (run, _) in KERNELS.items() if name != "sqrt"},
    "scaled_div": lambda xs, ys, zs, **kw: k.scaled_div(xs, zs, -0.5, **kw),
    "div_root": lambda xs, ys, zs, **kw: k.div_root(xs, zs, 1e-3, 2.0, **kw),
    "mul_root": lambda xs, ys, zs, **kw: k.mul_root(xs, zs, 1e-3, **kw),
    "masked_fill": lambda xs, ys, zs, **kw: k.masked_fill(xs, [y > 0 for y in ys], 0.0, **kw),
    "mul_real": lambda xs, ys, zs, **kw: k.mul_real(xs, zs, **kw),
    "lerp_bf16": lambda xs, ys, zs, **kw: k.lerp(xs, ys, torch.tensor(0.1), **kw),
    # transforms also write a donated input through ``out=`` (e.g. Rprop's sign)
    "sign_out": lambda xs, ys, zs, donate: k.sign(xs, out=xs if donate else None),
    "where_out": lambda xs, ys, zs, donate: k.where([y > 0 for y in ys], xs, 0.0, out=xs if donate else None),
    "select_by_sign_out": lambda xs, ys, zs, donate: k.select_by_sign(ys, xs, 0.0, xs, out=xs if donate else None),
    "copy": lambda xs, ys, zs, donate: k.copy(xs, ys) if donate else ys,
}


@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "foreach"])
@pytest.mark.parametrize("name", list(REDIRECTED))
def test_donations_into_writes_the_buffers_and_leaves_the_sources(name, foreach):
    run = REDIRECTED[name]
    fo.kernels.set_foreach(foreach)
    try:
        xs, ys, zs = _lists()
        if name == "lerp_bf16":
            xs, ys = [x.bfloat16() for x in xs], [y.bfloat16() for y in ys]
        originals = [x.clone() for x in xs]
        expected = run([x.clone() for x in xs], ys, zs, donate=True)
        buffers = [torch.full_like(x, float("nan")) for x in xs]
        with k.donations_into(xs, buffers):
            result = run(xs, ys, zs, donate=True)
        assert all(r is b for r, b in zip(result, buffers))  # written into the given buffers
        assert all(torch.equal(x, o) for x, o in zip(xs, originals))  # the sources untouched
        for r, e in zip(result, expected):
            assert torch.equal(r, e)  # the same bits as donating the sources themselves
        assert k.mul(xs, 2.0, donate=True)[0] is xs[0]  # outside the block: donation as usual
    finally:
        fo.kernels.set_foreach(None)


def test_donations_into_is_ignored_under_torch_func():
    x, buf = torch.tensor([1.0, 2.0]), torch.zeros(2)
    with k.donations_into([x], [buf]):
        out = torch.func.vmap(lambda t: k.mul([t], 3.0, donate=True)[0])(x.unsqueeze(1))
    assert torch.equal(out.squeeze(1), 3 * x) and torch.equal(buf, torch.zeros(2))


def test_split_final_scale_and_scaled_apply():
    head, factor = fo.combine.split_final_scale(fo.chain(fo.scale_by_rms(), fo.scale_by_learning_rate(0.1)))
    assert factor == -0.1 and len(head.init([torch.zeros(2)])) == 1
    assert fo.combine.split_final_scale(fo.chain(fo.scale(2.0), fo.scale_by_sign())) is None
    assert fo.combine.split_final_scale(fo.scale(2.0)) is None  # not a chain
    assert fo.combine.split_final_scale(fo.chain(fo.scale_by_learning_rate(torch.tensor(0.1)))) is None
    assert fo.combine.split_final_scale(fo.chain(fo.scale_by_learning_rate(lambda c: 0.1))) is None
    p, u = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([0.3, -0.7], dtype=torch.float64)
    fo.apply_updates_([p], [u], -0.1)
    assert torch.equal(p, torch.tensor([1.0, 2.0], dtype=torch.float64).add(u, alpha=-0.1))
    q = torch.ones(2, dtype=torch.bfloat16)
    fo.apply_updates_([q], [torch.tensor([0.25, 0.5])], 2.0)  # scaled in float32, then cast
    assert torch.equal(q, torch.tensor([1.5, 2.0], dtype=torch.bfloat16))


def test_out_argument_and_complex_per_component():
    xs, ys, _ = _lists()
    out = [torch.empty_like(x) for x in xs]
    result = k.add(xs, ys, out=out)
    assert result[0] is out[0] and torch.equal(out[1], xs[1] + ys[1])
    z = [torch.tensor([-4 + 9j, 1 - 1j], dtype=torch.complex128)]
    assert torch.equal(k.sqrt([torch.tensor([4 + 9j], dtype=torch.complex128)])[0],
                       torch.tensor([2 + 3j], dtype=torch.complex128))
    assert torch.equal(k.sign(z)[0], torch.tensor([-1 + 1j, 1 - 1j], dtype=torch.complex128))
    assert k.global_norm(z).item() == pytest.approx((16 + 81 + 2) ** 0.5)


def test_apply_updates_pure_and_in_place():
    params = {"w": torch.ones(2, dtype=torch.bfloat16), "b": torch.ones(1)}
    updates = {"w": torch.full((2,), 0.5), "b": None}
    new = fo.apply_updates(params, updates)
    assert new["w"].dtype == torch.bfloat16 and torch.equal(new["w"], torch.full((2,), 1.5, dtype=torch.bfloat16))
    assert new["b"] is params["b"] and torch.equal(params["w"], torch.ones(2, dtype=torch.bfloat16))
    ptr = params["w"].data_ptr()
    fo.apply_updates_(params, updates)
    assert params["w"].data_ptr() == ptr and torch.equal(params["w"], new["w"])
    assert torch.equal(params["b"], torch.ones(1))


# ---------------------------------------------------------------------------------
# Differentiability of the kernel layer: sqrt at 0, no in-place writes under torch.func


def test_sqrt_value_is_torchs_bit_for_bit_when_differentiated():
    x = torch.tensor([0.0, -0.0, 4.0, 2.0, -1.0, float("nan"), float("inf"), 1e-300], dtype=DT,
                     requires_grad=True)
    y = k.sqrt([x])[0]
    ref = torch.sqrt(x.detach())
    assert torch.equal(y.detach().nan_to_num(7.0), ref.nan_to_num(7.0))
    assert torch.equal(torch.signbit(y.detach()), torch.signbit(ref))  # -0.0 stays -0.0


def test_sqrt_derivative_is_zero_at_zero_and_exact_elsewhere():
    x = torch.tensor([0.0, 4.0, 0.25, 1e-12], dtype=DT, requires_grad=True)
    (g,) = torch.autograd.grad(k.sqrt([x])[0].sum(), x, create_graph=True)
    assert torch.equal(g.detach(), torch.tensor([0.0, 0.25, 1.0, 0.5e6], dtype=DT))
    (h,) = torch.autograd.grad(g.sum(), x)  # d2/dx2 sqrt = -1/4 x^(-3/2), 0 at 0
    assert torch.equal(h, torch.tensor([0.0, -1 / 32, -2.0, -0.25e18], dtype=DT))


def test_sqrt_under_torch_func_has_finite_derivatives_at_zero():
    f = lambda x: k.sqrt([x * x])[0].sum()  # |x|: subgradient 0 at 0
    x = torch.tensor([0.0, -3.0, 2.0], dtype=DT)
    assert torch.equal(torch.func.grad(f)(x), torch.tensor([0.0, -1.0, 1.0], dtype=DT))
    hess = torch.func.jacrev(torch.func.grad(f))(x)
    assert torch.isfinite(hess).all()


def test_sqrt_without_gradients_is_torchs_kernel():
    x = torch.tensor([0.0, 4.0], dtype=DT)
    y = k.sqrt([x])[0]
    assert y.grad_fn is None and torch.equal(y, torch.sqrt(x))
    out = k.sqrt([x], donate=True)[0]
    assert out is x and torch.equal(x, torch.tensor([0.0, 2.0], dtype=DT))


@pytest.mark.parametrize("op", ["add", "mul", "addcmul", "lerp", "sqrt", "clamp", "masked_fill", "where_out"])
def test_donating_kernels_write_nothing_in_place_under_vmap(op):
    # an unbatched buffer (from shared state) combined with batched values: under vmap the
    # donated and ``out`` forms must return new tensors, equal to the per-example loop
    state = torch.tensor([0.5, 2.0, 0.0], dtype=DT)
    batch = torch.randn(4, 3, dtype=DT, generator=torch.Generator().manual_seed(0))

    def step(g):
        buf = k.mul([state], 0.9)  # a fresh intermediate made from unbatched state
        if op == "add":
            return k.add(buf, [g], 0.1, donate=True)[0]
        if op == "mul":
            return k.mul(buf, [g], donate=True)[0]
        if op == "addcmul":
            return k.addcmul(buf, [g], [g], 0.1, donate=True)[0]
        if op == "lerp":
            return k.lerp(buf, [g], 0.1, donate=True)[0]
        if op == "sqrt":
            return k.sqrt(k.add(buf, [g * g], donate=True), donate=True)[0]
        if op == "clamp":
            return k.clamp(k.add(buf, [g], donate=True), -0.5, 0.5, donate=True)[0]
        if op == "masked_fill":
            return k.masked_fill(k.add(buf, [g], donate=True), [g > 0], 0.0, donate=True)[0]
        return k.where(g > 0, [g], 0.0, out=buf)[0]

    batched = torch.func.vmap(step)(batch)
    looped = torch.stack([step(g) for g in batch])
    assert torch.equal(batched, looped)
    assert torch.equal(state, torch.tensor([0.5, 2.0, 0.0], dtype=DT))


def test_tree_where_selects_whole_trees_without_leaking_nan():
    new = {"a": torch.tensor([float("nan"), 1.0]), "b": None, "n": 3}
    old = {"a": torch.tensor([5.0, 6.0]), "b": None, "n": 3}
    out = fo.tree.where(torch.tensor(False), new, old)
    assert torch.equal(out["a"], old["a"]) and out["b"] is None and out["n"] == 3
    assert torch.equal(fo.tree.where(torch.tensor(False), new, 0.0)["a"], torch.zeros(2))
    with pytest.raises(ValueError, match="inner state changed structure"):
        fo.tree.where(torch.tensor(True), {"a": torch.ones(1)}, {"b": torch.ones(1)}, name="inner state")
    with pytest.raises(TypeError, match="not a tensor"):
        fo.tree.where(torch.tensor(True), {"n": 1}, {"n": 2})


def test_finite_checks_and_leafwise_scalars():
    xs = [torch.tensor([1.0, float("inf")]), torch.tensor([[float("nan")]]), torch.ones(3)]
    assert not fo.tree.all_finite(xs).item() and fo.tree.all_finite(xs[2:]).item()
    assert k.count_nonfinite(xs).item() == 2 and k.count_nonfinite([]).item() == 0
    ratio, total = k.leafwise(lambda a, b: (a / b, a + b), [torch.tensor(1.0), torch.tensor(6.0)],
                              [torch.tensor(4.0), torch.tensor(3.0)], dtype=DT)
    assert [r.item() for r in ratio] == [0.25, 2.0] and [t.item() for t in total] == [5.0, 9.0]
    assert ratio[0].dtype == DT and ratio[0].dim() == 0
    assert k.leafwise(lambda a: a, []) == []
    squared = k.global_norm([torch.tensor([3.0]), torch.tensor([4.0])], squared=True)
    assert squared.item() == 25.0


@pytest.mark.parametrize("kind", ["norms", "unit_norms", "global_norm"])
def test_norms_have_finite_second_derivatives_at_zero(kind):
    # torch's own: jacrev(grad(vector_norm))(zeros) is NaN; ours is finite, same values
    def f(x):
        if kind == "norms":
            return k.norms([x])[0]
        if kind == "unit_norms":
            return k.unit_norms([x], 1)[0].sum()
        return k.global_norm([x, torch.zeros(2, dtype=DT)])

    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=DT)
    assert torch.equal(f(x), {"norms": torch.tensor(5.0, dtype=DT), "unit_norms": torch.tensor(5.0, dtype=DT),
                              "global_norm": torch.tensor(5.0, dtype=DT)}[kind])
    for point in (x, torch.zeros(2, 2, dtype=DT)):
        hess = torch.func.jacrev(torch.func.grad(f))(point)
        assert torch.isfinite(hess).all()
    g = torch.func.grad(f)(x)
    assert torch.allclose(g[1], torch.tensor([0.6, 0.8], dtype=DT), rtol=1e-15)
    assert torch.equal(torch.func.grad(f)(torch.zeros(2, 2, dtype=DT)), torch.zeros(2, 2, dtype=DT))


def test_compiled_norms_sum_rows_at_memory_speed_and_match_eager():
    # traced, a long norm is summed as rows of 4096 and then the row sums (inductor's CPU
    # code runs one long float sum as a cascade summation, about 2/3 of memory speed); the
    # adapter's step runs without grad mode, as here
    from torch._inductor.utils import run_and_get_code
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(3 * 4096 + 5, generator=gen), torch.randn(100, generator=gen)]
    compiled = torch.compile(lambda xs: (fo.kernels.norms(xs), fo.kernels.global_norm(xs)), fullgraph=True)
    with torch._inductor.config.patch(fx_graph_cache=False), torch.no_grad():
        (norms, total), codes = run_and_get_code(compiled, xs)
    exact = [torch.linalg.vector_norm(x.double()) for x in xs]
    for got, want in zip(norms, exact):
        torch.testing.assert_close(got.double(), want, rtol=2e-7, atol=0)  # float32 sums of <= 4096 terms
    torch.testing.assert_close(total.double(), torch.linalg.vector_norm(torch.stack(exact)), rtol=2e-7, atol=0)
    assert "cascade_sum_combine" not in "".join(codes)
