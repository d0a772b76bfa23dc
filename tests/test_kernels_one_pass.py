"""The kernels that let eager donating steps run in fewer memory passes and allocate
nothing param-sized (``scaled_div``, ``div_root``, ``mul_root``), and the drop-ins' eager
steps built on them.

* Written in place, each kernel gives the bits of the separate kernels it replaces
  (``mul`` then ``div``, as torch's ``addcdiv`` rounds ``(value * x) / y``; ``div``,
  ``addcmul``, ``add``, ``sqrt``, ``add``, ``mul``, ``div``), in float32, float64 and
  complex128, for 0-d and n-d tensors; pure, it is differentiable as they are (the same
  gradients, bit for bit).
* In place, no op allocates anything param-sized (torch's profiler); nor does a
  steady-state eager step of a drop-in on the functional update (Rprop excepted: its sign
  tests are made in new tensors), while torch's for-loop allocates temporaries each step.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import adapters
from functional_optim import kernels as k

SHAPES = [(), (7,), (5, 6), (3, 2, 4, 4)]


def _tensors(dtype, seed, positive=False):
    gen = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype == torch.complex128 else dtype
    out = []
    for shape in SHAPES:
        t = torch.randn(shape + ((2,) if dtype.is_complex else ()), generator=gen, dtype=real)
        t = t.abs() + 0.1 if positive else t
        out.append(torch.view_as_complex(t) if dtype.is_complex else t)
    return out


def _clones(ts):
    return [t.clone() for t in ts]


def _largest_allocation(fn) -> int:
    """The largest number of bytes one op allocated while ``fn`` ran."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.events() if not e.name.startswith("[")), default=0)


DTYPES = [torch.float32, torch.float64, torch.complex128]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("value", [-0.01, 1, "tensors"])
def test_scaled_div_in_place_is_mul_then_div(dtype, value):
    xs, ys = _tensors(dtype, 0), _tensors(dtype, 1, positive=True)
    if value == "tensors":  # per-tensor 0-d scalars, as steps.per_leaf makes them
        value = [torch.tensor(-0.5 * (i + 1), dtype=torch.float64) for i in range(len(xs))]
        value = k.scalars_for(value, xs)
    want = k.div(k.mul(xs, value), ys)
    for mode in ("donate", "out", "pure"):
        xs_in = _clones(xs)
        out = [torch.empty_like(x) for x in xs] if mode == "out" else None
        got = k.scaled_div(xs_in, ys, value, donate=mode == "donate", out=out)
        for g, w in zip(got, want):
            assert torch.equal(g, w), mode
        if mode == "donate":
            assert all(g is x for g, x in zip(got, xs_in))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ["rmsprop", "centered", "nadam", "eps_root", "tensor_eps"])
def test_div_root_in_place_is_the_separate_kernels(dtype, case):
    xs, ss = _tensors(dtype, 0), _tensors(dtype, 1, positive=True)
    cs = [0.1 * c for c in _tensors(dtype, 2)]
    divisor = [torch.tensor(0.3 + 0.1 * i, dtype=torch.float64) for i in range(len(xs))]
    eps, eps_root, value, centers, div = 1e-3, 0.0, -0.02, None, None
    if case == "centered":
        centers = cs
    elif case == "nadam":
        div, value = k.scalars_for(divisor, xs), 1
    elif case == "eps_root":
        eps, eps_root = 0.0, 1e-3
    elif case == "tensor_eps":
        eps = torch.tensor(1e-3, dtype=torch.float64)
    d = list(ss)
    if div is not None:
        d = k.div(d, div)
    if centers is not None:
        d = k.addcmul(d, centers, centers, -1)
    d = k.sqrt(k.add(d, eps_root))
    want = k.div(k.mul(xs, value), k.add(d, eps))
    for mode in ("donate", "out", "pure"):
        xs_in = _clones(xs)
        out = [torch.empty_like(x) for x in xs] if mode == "out" else None
        got = k.div_root(xs_in, ss, eps, value, eps_root=eps_root, divisor=div, centers=centers,
                         donate=mode == "donate", out=out)
        for g, w in zip(got, want):
            assert torch.equal(g, w), mode


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mul_root_in_place_is_the_separate_kernels(dtype):
    xs, ss = _tensors(dtype, 0), _tensors(dtype, 1, positive=True)
    want = k.mul(xs, k.sqrt(k.add(ss, 1e-6)))
    for mode in ("donate", "out", "pure"):
        xs_in = _clones(xs)
        out = [torch.empty_like(x) for x in xs] if mode == "out" else None
        got = k.mul_root(xs_in, ss, 1e-6, donate=mode == "donate", out=out)
        for g, w in zip(got, want):
            assert torch.equal(g, w), mode


def test_pure_kernels_differentiate_as_the_separate_kernels():
    xs, ss = _tensors(torch.float64, 0), _tensors(torch.float64, 1, positive=True)
    ss[1] = ss[1].clone()
    ss[1][0] = 0.0  # sqrt's derivative at 0 is taken as 0 (kernels.sqrt)

    def total(fn):
        leaves = [t.clone().requires_grad_(True) for t in xs + ss]
        out = fn(leaves[:len(xs)], leaves[len(xs):])
        return torch.autograd.grad(sum(o.sum() for o in out), leaves)

    fused = total(lambda x, s: k.mul_root(k.div_root(x, s, 1e-3, -0.5), s, 1e-6))
    separate = total(lambda x, s: k.mul(k.div(k.mul(x, -0.5), k.add(k.sqrt(s), 1e-3)), k.sqrt(k.add(s, 1e-6))))
    for a, b in zip(fused, separate):
        assert torch.equal(a, b)
    assert all(torch.isfinite(g).all() for g in fused)


def test_in_place_kernels_allocate_nothing_param_sized():
    xs = [torch.randn(4096), torch.randn(64, 64)]
    ss = [torch.rand(4096) + 0.1, torch.rand(64, 64) + 0.1]
    cs = [torch.randn(4096), torch.randn(64, 64)]
    k.div_root(_clones(xs), ss, 1e-8, -0.01, centers=cs, donate=True)  # the scratch, made once
    bytes_per_tensor = 4096 * 4
    assert _largest_allocation(lambda: k.div_root(xs, ss, 1e-8, -0.01, centers=cs, donate=True)) < 64
    assert _largest_allocation(lambda: k.mul_root(xs, ss, 1e-6, donate=True)) < 64
    assert _largest_allocation(lambda: k.scaled_div(xs, ss, -0.01, donate=True)) < 64
    assert _largest_allocation(lambda: k.div_root(xs, ss, 1e-8, -0.01)) >= bytes_per_tensor  # pure: new tensors


# the drop-ins' eager steps on the functional update (no torch kernel), with options that
# exercise every transform they chain
EAGER = {
    "RMSprop": dict(lr=1e-2),
    "RMSprop_all": dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=0.1, maximize=True),
    "Adadelta": dict(weight_decay=0.1),
    "Adamax": dict(weight_decay=0.1, maximize=True),
    "NAdam": dict(weight_decay=0.1),
    "NAdam_decoupled": dict(weight_decay=0.1, decoupled_weight_decay=True),
    "RAdam": dict(weight_decay=0.1),
    "ASGD": dict(weight_decay=0.1),
    "Adagrad_unfused": dict(lr_decay=0.01, fused=False),
    "Adam_unfused": dict(amsgrad=True, fused=False),
    "SGD_unfused": dict(lr=0.1, momentum=0.9, fused=False),
}


@pytest.mark.parametrize("name", list(EAGER))
def test_eager_steps_allocate_nothing_param_sized(name):
    shapes = [(), (256,), (16, 16), (4, 4, 4, 4)]  # every param 1 KiB in float32
    cls = getattr(adapters, name.split("_")[0])
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    opt = cls(params, **EAGER[name])
    for _ in range(7):  # past RAdam's first rectified step (t = 6)
        for p in params:
            p.grad = torch.randn(p.shape)
        opt.step()
    assert _largest_allocation(opt.step) < 256 * 4  # steady state: the scratch exists already
    ref = getattr(torch.optim, cls.__name__)([torch.nn.Parameter(torch.randn(s)) for s in shapes],
                                             **{key: v for key, v in EAGER[name].items() if key != "fused"},
                                             foreach=False)
    for p in ref.param_groups[0]["params"]:
        p.grad = torch.randn(p.shape)
    ref.step()
    if name not in ("ASGD", "SGD_unfused"):  # torch's for-loop makes param-sized temporaries
        assert _largest_allocation(ref.step) >= 256 * 4
