"""functional_optim.implicit: hypergradients of inner solutions by implicit differentiation.

Checked against closed forms (ridge regression), against unrolled differentiation of the
inner loop run to convergence, and the linear solvers against torch.linalg.solve.
"""

from __future__ import annotations

import functools

import pytest
import torch

import functional_optim as fo
from functional_optim.implicit import (custom_root, hvp, solve_cg, solve_normal_cg,
                                       stationary_point)

DT = torch.float64


def rel(a, b):
    return float((a - b).norm() / b.norm())


def _data(seed=0, n=40, d=5, n_val=15):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, dtype=DT)
    b = torch.randn(n, generator=g, dtype=DT)
    A_val = torch.randn(n_val, d, generator=g, dtype=DT)
    b_val = torch.randn(n_val, generator=g, dtype=DT)
    return A, b, A_val, b_val


A, B, A_VAL, B_VAL = _data()
D = A.shape[1]


def inner_objective(x, lam):
    """||A x - b||^2 / 2 + sum(lam * x^2) / 2 (lam a scalar or per-coordinate)."""
    return 0.5 * (A @ x - B).square().sum() + 0.5 * (lam * x.square()).sum()


def val_loss(x):
    return 0.5 * (A_VAL @ x - B_VAL).square().sum()


def sgd_solver(objective, steps=80):
    """An inner solver: `steps` of fo.sgd with torch.func.grad gradients.

    Heavy ball tuned to Hessian eigenvalues in [16, 60] (every inner problem here): step
    4 / (sqrt(L) + sqrt(mu))^2, momentum ((sqrt(k) - 1) / (sqrt(k) + 1))^2, contracting
    by about 0.32 per step, so 80 steps reach the solution to rounding.
    """
    mu, L = 16.0, 60.0
    kappa = L / mu
    tx = fo.sgd(lr=4.0 / (L**0.5 + mu**0.5) ** 2, momentum=((kappa**0.5 - 1) / (kappa**0.5 + 1)) ** 2)
    grad_fn = torch.func.grad(objective)

    def solver(x, *args):
        state = tx.init(x)
        for _ in range(steps):
            updates, state = tx.update(grad_fn(x, *args), state, x)
            x = fo.apply_updates(x, updates)
        return x

    return solver


ridge_argmin = custom_root(stationary_point(inner_objective))(sgd_solver(inner_objective))


def closed_form(lam):
    """x*(lam) and d L_val(x*) / d lam for the ridge problem (lam scalar or vector)."""
    lam = torch.as_tensor(lam, dtype=DT)
    H = A.T @ A + torch.diag(lam.expand(D))
    x = torch.linalg.solve(H, A.T @ B)
    w = torch.linalg.solve(H, A_VAL.T @ (A_VAL @ x - B_VAL))  # H^{-1} dL/dx (H symmetric)
    per_coord = -w * x  # dL/dlam_j = -(H^{-1} dL/dx)_j x*_j
    return x, (per_coord.sum() if lam.dim() == 0 else per_coord)


# ---------------------------------------------------------------------------------
# Ridge regression against the closed form


def test_ridge_scalar_hypergradient_matches_closed_form():
    lam = torch.tensor(0.7, dtype=DT, requires_grad=True)
    x = ridge_argmin(torch.zeros(D, dtype=DT), lam)
    (g,) = torch.autograd.grad(val_loss(x), lam)
    x_ref, g_ref = closed_form(0.7)
    assert rel(x.detach(), x_ref) < 1e-12
    assert abs(float(g - g_ref)) / abs(float(g_ref)) < 1e-8
    # the solver saw detached inputs: no graph through its 80 steps
    assert x.grad_fn is not None and type(x.grad_fn).__name__ == "_ImplicitRootBackward"


def test_ridge_vector_penalty_hypergradient_matches_closed_form():
    lam0 = torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0], dtype=DT)
    lam = lam0.clone().requires_grad_()
    x = ridge_argmin(torch.zeros(D, dtype=DT), lam)
    val_loss(x).backward()
    x_ref, g_ref = closed_form(lam0)
    assert rel(x.detach(), x_ref) < 1e-12
    assert rel(lam.grad, g_ref) < 1e-8


def test_ridge_pytree_params_and_hyperparams():
    # x = {"w": weights, "c": intercept}; theta = {"lam": weight penalty, "mu": intercept penalty}
    def objective(x, theta):
        resid = A @ x["w"] + x["c"] - B
        return 0.5 * resid.square().sum() + 0.5 * theta["lam"] * x["w"].square().sum() \
            + 0.5 * theta["mu"] * x["c"].square()

    def outer(x):
        return 0.5 * (A_VAL @ x["w"] + x["c"] - B_VAL).square().sum()

    argmin = custom_root(stationary_point(objective))(sgd_solver(objective))
    theta = {"lam": torch.tensor(0.4, dtype=DT, requires_grad=True),
             "mu": torch.tensor(2.0, dtype=DT, requires_grad=True)}
    x = argmin({"w": torch.zeros(D, dtype=DT), "c": torch.zeros((), dtype=DT)}, theta)
    g_lam, g_mu = torch.autograd.grad(outer(x), [theta["lam"], theta["mu"]])

    # closed form on z = [w, c], design [A, 1], penalty diag(lam, ..., lam, mu)
    Z, Z_val = torch.cat([A, torch.ones(len(A), 1, dtype=DT)], 1), torch.cat(
        [A_VAL, torch.ones(len(A_VAL), 1, dtype=DT)], 1)
    pen = torch.tensor([0.4] * D + [2.0], dtype=DT)
    H = Z.T @ Z + torch.diag(pen)
    z = torch.linalg.solve(H, Z.T @ B)
    per = -torch.linalg.solve(H, Z_val.T @ (Z_val @ z - B_VAL)) * z
    assert rel(torch.cat([x["w"].detach(), x["c"].detach()[None]]), z) < 1e-11
    assert abs(float(g_lam - per[:D].sum())) / abs(float(per[:D].sum())) < 1e-8
    assert abs(float(g_mu - per[D])) / abs(float(per[D])) < 1e-8


def test_custom_cg_solver_as_inner_loop():
    # the inner problem solved exactly by CG (closed over A): x* = (A^T A + lam I)^{-1} A^T b
    @custom_root(stationary_point(inner_objective))
    def argmin(x0, lam):
        return solve_cg(lambda v: A.T @ (A @ v) + lam * v, A.T @ B, x0, tol=1e-14)

    lam = torch.tensor(0.7, dtype=DT, requires_grad=True)
    (g,) = torch.autograd.grad(val_loss(argmin(torch.zeros(D, dtype=DT), lam)), lam)
    assert abs(float(g - closed_form(0.7)[1])) / abs(float(closed_form(0.7)[1])) < 1e-9


# ---------------------------------------------------------------------------------
# Against unrolled differentiation


def test_matches_unrolled_gradient_descent():
    lam0 = torch.tensor([0.3, 0.3, 1.0, 1.0, 2.0], dtype=DT)
    lr = float(1.0 / (torch.linalg.eigvalsh(A.T @ A)[-1] + 2.0))
    grad_fn = torch.func.grad(inner_objective)

    def unrolled(lam):
        x = torch.zeros(D, dtype=DT)
        for _ in range(150):  # plain gradient descent, differentiated step by step
            x = x - lr * grad_fn(x, lam)
        return val_loss(x)

    g_unrolled = torch.func.grad(unrolled)(lam0)
    g_implicit = torch.func.grad(lambda lam: val_loss(ridge_argmin(torch.zeros(D, dtype=DT), lam)))(lam0)
    # gradient descent with step 1/L contracts by 1 - mu/L ~ 0.7 per step here: 150 steps
    # converge the unrolled Jacobian to well below 1e-9 of the implicit one
    assert rel(g_implicit, g_unrolled) < 1e-9
    assert rel(g_implicit, closed_form(lam0)[1]) < 1e-8


def test_short_unroll_differs_but_implicit_does_not_need_it():
    # a 5-step unroll is far from the implicit gradient: the comparison above is not vacuous
    lam0 = torch.tensor(0.7, dtype=DT)
    lr = float(1.0 / (torch.linalg.eigvalsh(A.T @ A)[-1] + 2.0))
    grad_fn = torch.func.grad(inner_objective)

    def unrolled(lam):
        x = torch.zeros(D, dtype=DT)
        for _ in range(5):
            x = x - lr * grad_fn(x, lam)
        return val_loss(x)

    assert abs(float(torch.func.grad(unrolled)(lam0) - closed_form(0.7)[1])) > 1e-3


# ---------------------------------------------------------------------------------
# Autograd front ends


def test_torch_func_grad_and_autograd_agree():
    lam0 = torch.tensor(1.3, dtype=DT)
    x0 = torch.zeros(D, dtype=DT)
    g_func = torch.func.grad(lambda lam: val_loss(ridge_argmin(x0, lam)))(lam0)
    lam = lam0.clone().requires_grad_()
    (g_autograd,) = torch.autograd.grad(val_loss(ridge_argmin(x0, lam)), lam)
    lam2 = lam0.clone().requires_grad_()
    val_loss(ridge_argmin(x0, lam2)).backward()
    ref = closed_form(1.3)[1]
    for g in (g_func, g_autograd, lam2.grad):
        assert abs(float(g - ref)) / abs(float(ref)) < 1e-8


def test_solver_may_use_autograd_internally_under_torch_func_grad():
    # the solver runs with grad mode on (on detached inputs), so torch.autograd.grad works in it
    @custom_root(stationary_point(inner_objective))
    def argmin(x, lam):
        x = x.clone().requires_grad_()
        for _ in range(60):
            (g,) = torch.autograd.grad(inner_objective(x, lam), x)
            x = (x - 2.0 / (16.76 + 52.6) * g).detach().requires_grad_()  # step 2 / (mu + L)
        return x.detach()

    g = torch.func.grad(lambda lam: val_loss(argmin(torch.zeros(D, dtype=DT), lam)))(torch.tensor(0.7, dtype=DT))
    assert abs(float(g - closed_form(0.7)[1])) / abs(float(closed_form(0.7)[1])) < 1e-8


def test_torch_func_vjp_jacobian_column():
    # dx*/dlam = -H^{-1} x* via torch.func.vjp against one-hot cotangents (= jacobian rows)
    lam0 = torch.tensor(0.9, dtype=DT)
    x_star, vjp_fn = torch.func.vjp(lambda lam: ridge_argmin(torch.zeros(D, dtype=DT), lam), lam0)
    H = A.T @ A + 0.9 * torch.eye(D, dtype=DT)
    jac_ref = -torch.linalg.solve(H, torch.linalg.solve(H, A.T @ B))
    jac = torch.stack([vjp_fn(e)[0] for e in torch.eye(D, dtype=DT)])
    assert rel(jac, jac_ref) < 1e-9


def test_non_symmetric_root_uses_normal_cg():
    # F(x, theta) = M x - theta (M not symmetric): x* = M^{-1} theta, d<c, x*>/dtheta = M^{-T} c
    g = torch.Generator().manual_seed(3)
    M = torch.randn(4, 4, generator=g, dtype=DT) + 4 * torch.eye(4, dtype=DT)
    c = torch.randn(4, generator=g, dtype=DT)

    @custom_root(lambda x, theta: M @ x - theta)  # default solve: normal CG
    def root(x0, theta):
        return torch.linalg.solve(M, theta)

    theta = torch.randn(4, generator=g, dtype=DT).requires_grad_()
    (grad,) = torch.autograd.grad(c @ root(torch.zeros(4, dtype=DT), theta), theta)
    assert rel(grad, torch.linalg.solve(M.T, c)) < 1e-9
    grad_func = torch.func.grad(lambda th: c @ root(torch.zeros(4, dtype=DT), th))(theta.detach())
    assert rel(grad_func, torch.linalg.solve(M.T, c)) < 1e-9
    # plain CG on the same non-symmetric system gives a wrong answer (why normal CG is the default)
    wrong = custom_root(lambda x, theta: M @ x - theta, solve=functools.partial(solve_cg, maxiter=4))(
        lambda x0, theta: torch.linalg.solve(M, theta))
    (grad_cg,) = torch.autograd.grad(c @ wrong(torch.zeros(4, dtype=DT), theta), theta)
    assert rel(grad_cg, torch.linalg.solve(M.T, c)) > 1e-3


def test_has_aux_and_constant_args():
    @custom_root(stationary_point(lambda x, lam, scale: scale * inner_objective(x, lam)), has_aux=True)
    def argmin(x0, lam, scale):
        H = A.T @ A + lam * torch.eye(D, dtype=DT)
        return torch.linalg.solve(H, A.T @ B), {"iters": torch.tensor(1)}

    lam = torch.tensor(0.7, dtype=DT, requires_grad=True)
    x, aux = argmin(torch.zeros(D, dtype=DT), lam, 2.0)  # 2.0: a non-tensor constant argument
    (g,) = torch.autograd.grad(val_loss(x), lam)
    assert int(aux["iters"]) == 1
    assert abs(float(g - closed_form(0.7)[1])) / abs(float(closed_form(0.7)[1])) < 1e-9


def test_imaml_style_proximal_inner_problem():
    # iMAML: phi*(theta) = argmin_phi L(phi) + lam/2 ||phi - theta||^2; dphi*/dtheta = (I + H/lam)^{-1}
    lam = 2.0

    def objective(phi, theta):
        return inner_objective(phi, torch.tensor(0.0, dtype=DT)) + 0.5 * lam * (phi - theta).square().sum()

    @custom_root(stationary_point(objective), solve=functools.partial(solve_cg, tol=1e-13))
    def adapt(phi0, theta):
        return torch.linalg.solve(A.T @ A + lam * torch.eye(D, dtype=DT), A.T @ B + lam * theta)

    theta = torch.linspace(-1, 1, D, dtype=DT).requires_grad_()
    (g,) = torch.autograd.grad(val_loss(adapt(theta.detach(), theta)), theta)
    phi = torch.linalg.solve(A.T @ A + lam * torch.eye(D, dtype=DT), A.T @ B + lam * theta.detach())
    ref = torch.linalg.solve(torch.eye(D, dtype=DT) + A.T @ A / lam, A_VAL.T @ (A_VAL @ phi - B_VAL))
    assert rel(g, ref) < 1e-10


# ---------------------------------------------------------------------------------
# Linear solvers


def _spd(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(n, n, generator=g, dtype=DT)
    return Q @ Q.T + 0.5 * torch.eye(n, dtype=DT), torch.randn(n, generator=g, dtype=DT)


def test_cg_matches_linalg_solve():
    S, b = _spd()
    assert rel(solve_cg(lambda v: S @ v, b), torch.linalg.solve(S, b)) < 1e-10
    # with ridge, a starting point, and on a pytree of two blocks
    ref = torch.linalg.solve(S + 0.3 * torch.eye(8, dtype=DT), b)
    assert rel(solve_cg(lambda v: S @ v, b, torch.ones(8, dtype=DT), ridge=0.3), ref) < 1e-10

    def matvec(t):
        y = S @ torch.cat([t["u"], t["v"]])
        return {"u": y[:3], "v": y[3:]}

    x = solve_cg(matvec, {"u": b[:3], "v": b[3:]})
    assert rel(torch.cat([x["u"], x["v"]]), torch.linalg.solve(S, b)) < 1e-10


def test_cg_stops_at_maxiter_and_on_zero_rhs():
    S, b = _spd()
    x1 = solve_cg(lambda v: S @ v, b, maxiter=1)
    # one CG step is the exact line minimiser along b
    assert rel(x1, (b @ b) / (b @ S @ b) * b) < 1e-13
    assert torch.equal(solve_cg(lambda v: S @ v, torch.zeros(8, dtype=DT)), torch.zeros(8, dtype=DT))


def test_normal_cg_matches_linalg_solve():
    g = torch.Generator().manual_seed(2)
    M = torch.randn(6, 6, generator=g, dtype=DT) + 3 * torch.eye(6, dtype=DT)
    b = torch.randn(6, generator=g, dtype=DT)
    ref = torch.linalg.solve(M, b)
    assert rel(solve_normal_cg(lambda v: M @ v, b), ref) < 1e-10
    assert rel(solve_normal_cg(lambda v: M @ v, b, rmatvec=lambda u: M.T @ u), ref) < 1e-10
    ref_ridge = torch.linalg.solve(M.T @ M + 0.1 * torch.eye(6, dtype=DT), M.T @ b)
    assert rel(solve_normal_cg(lambda v: M @ v, b, ridge=0.1), ref_ridge) < 1e-10


def test_hvp_matches_hessian():
    S, b = _spd(5)
    f = lambda x: 0.5 * x @ S @ x + x.pow(4).sum()  # noqa: E731
    x = torch.linspace(-1, 1, 5, dtype=DT)
    v = torch.arange(5, dtype=DT)
    H = torch.func.hessian(f)(x)
    assert rel(hvp(f, x, v), H @ v) < 1e-13


# ---------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_name_the_argument():
    S, b = _spd(3)
    mv = lambda v: S @ v  # noqa: E731
    with pytest.raises(ValueError, match="maxiter"):
        solve_cg(mv, b, maxiter=0)
    with pytest.raises(TypeError, match="maxiter"):
        solve_cg(mv, b, maxiter=2.5)
    with pytest.raises(ValueError, match="tol"):
        solve_cg(mv, b, tol=-1e-3)
    with pytest.raises(ValueError, match="ridge"):
        solve_normal_cg(mv, b, ridge=-1.0)
    with pytest.raises(TypeError, match="matvec"):
        solve_cg(S, b)
    with pytest.raises(TypeError, match="b must hold floating-point"):
        solve_cg(mv, torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="optimality_fn"):
        custom_root(None)
    with pytest.raises(TypeError, match="solve"):
        custom_root(lambda x, t: x - t, solve="cg")
    with pytest.raises(TypeError, match="has_aux"):
        custom_root(lambda x, t: x - t, has_aux=1)
    with pytest.raises(TypeError, match="solver"):
        custom_root(lambda x, t: x - t)(42)
    with pytest.raises(TypeError, match="objective_fn"):
        stationary_point("not a function")


def test_optimality_fn_with_wrong_structure_fails_in_backward():
    @custom_root(lambda x, t: (x - t).sum())  # a scalar for a vector solution
    def root(x0, t):
        return t.clone()

    t = torch.ones(3, dtype=DT, requires_grad=True)
    with pytest.raises(ValueError, match="optimality_fn must return"):
        root(torch.zeros(3, dtype=DT), t).sum().backward()


def test_has_aux_solver_must_return_pair():
    root = custom_root(lambda x, t: x - t, has_aux=True)(lambda x0, t: t.clone())
    with pytest.raises(TypeError, match="solution, aux"):
        root(torch.zeros(3, dtype=DT), torch.ones(3, dtype=DT))
