"""fo.linesearch.strong_wolfe against torch.optim.lbfgs._strong_wolfe, exactly.

Objectives along a line, chosen to drive every branch of the search: acceptance in the
bracketing phase, extrapolation, the [0, t] fallback when the bracketing runs out (also
where it changes the answer), the zoom with both of its safeguard moves (towards either
end of the bracket), the "old low becomes high" swap and the narrow-bracket stop.
"""

from __future__ import annotations

import pytest
import torch
from torch.optim.lbfgs import _cubic_interpolate, _strong_wolfe

from functional_optim.linesearch import cubic_interpolate, strong_wolfe

F64 = torch.float64


def value_and_grad(fn, v):
    v = v.detach().requires_grad_(True)
    f = fn(v)
    (g,) = torch.autograd.grad(f, v)
    return float(f.detach()), g


def assert_same_search(fn, x, d, t0, max_ls, tolerance_change=1e-9):
    f0, g0 = value_and_grad(fn, x)
    gtd = g0.dot(d)
    ref = _strong_wolfe(lambda xx, t, dd: value_and_grad(fn, xx + t * dd), x, t0, d, f0, g0, gtd,
                        tolerance_change=tolerance_change, max_ls=max_ls)
    ours = strong_wolfe(lambda t: value_and_grad(fn, x + t * d), d, t0, f0, g0, gtd,
                        tolerance_change=tolerance_change, max_linesearch_steps=max_ls)
    assert ours.value == ref[0]
    assert torch.equal(ours.grad, ref[1])
    assert float(ours.stepsize) == float(ref[2])
    assert ours.num_evals == ref[3]
    return ours


def kink(left_slope, right_slope, at=1.0):
    return lambda v: torch.where(v < at, left_slope * (at - v), right_slope * (v - at)).sum()


ONE = torch.ones(1, dtype=F64)
ZERO = torch.zeros(1, dtype=F64)

# (objective, initial step, max_ls): each reaches a branch the smooth problems rarely do
KINKED = [
    (kink(1, 1), 0.3, 25),  # no step satisfies the curvature condition: swap, narrow-bracket stop
    (kink(1, 1), 50.0, 2),
    (kink(1, 5), 0.5, 25),  # zoom safeguard moves the trial off the bracket's left end
    (kink(1, 5), 3.0, 60),
    (kink(1, 0.2), 0.5, 1),  # bracketing runs out; the [0, t] fallback picks t over the last trial
    (kink(5, 0.5), 0.9, 1),
    (kink(1, 0.05), 0.9, 25),  # a rise after the first extrapolation is accepted (torch: ls_iter > 1)
]


@pytest.mark.parametrize("case", range(len(KINKED)))
def test_kinked_lines_match_torch(case):
    fn, t0, max_ls = KINKED[case]
    assert_same_search(fn, ZERO, ONE, t0, max_ls)


def test_safeguard_towards_right_end_matches_torch():
    # found by random search: the zoom's trial lands by the bracket's right end twice
    m = torch.tensor([1.871781133656027, 0.5830178580258805, 2.0380794443688437], dtype=F64)
    c = torch.tensor([0.09889969690720157, -0.6594190478320785, 0.5185644992428782], dtype=F64)
    q, s = 0.22435742616653442, -0.6919179558753967

    def fn(v):
        return (c * (v - m).abs()).sum() + q * (v ** 2).sum() + s * v.sum() + torch.sin(5 * v).sum() * 0.1

    assert_same_search(fn, ZERO, ONE, 0.2549746513366699, 25)


def rosenbrock(v):
    return (100 * (v[1:] - v[:-1] ** 2) ** 2 + (1 - v[:-1]) ** 2).sum()


def ripples(v):
    return (torch.sin(10 * v) + v ** 2).sum()


@pytest.mark.parametrize("fn", [rosenbrock, ripples], ids=["rosenbrock", "ripples"])
def test_smooth_sweep_matches_torch(fn):
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        x = torch.randn(5, generator=gen, dtype=F64) * 1.5
        d = -value_and_grad(fn, x)[1] * torch.rand(5, generator=gen, dtype=F64)
        for t0 in (1e-4, 1e-2, 1.0, 1e3, 1e5):
            for max_ls, tol in ((0, 1e-9), (2, 1e-9), (25, 1e-9), (25, 1e-2)):
                assert_same_search(fn, x, d, t0, max_ls, tol)


def test_cubic_interpolate_matches_torch():
    gen = torch.Generator().manual_seed(3)
    for _ in range(50):
        x1, f1, x2, f2 = (float(v) for v in torch.randn(4, generator=gen, dtype=F64))
        g1, g2 = torch.randn(2, generator=gen, dtype=F64).unbind()
        bounds = None if x1 > 0 else (min(x1, x2) - 1.0, max(x1, x2) + 2.0)
        ours = cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds)
        ref = _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds)
        assert float(ours) == float(ref)
