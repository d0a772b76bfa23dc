"""Implicit differentiation: gradients of the solution of an inner problem.

A bilevel problem has an inner solution ``x*(theta)`` defined by an optimality condition
``F(x*, theta) = 0`` (for an inner minimisation, ``F`` is the gradient of the inner
objective w.r.t. ``x``). The implicit function theorem gives its Jacobian without
differentiating through the iterations that found it::

    dF/dx dx*/dtheta + dF/dtheta = 0   =>   dx*/dtheta = -(dF/dx)^{-1} dF/dtheta

so a reverse-mode gradient ``g`` on ``x*`` becomes ``-v^T dF/dtheta`` with ``v`` the
solution of the adjoint system ``(dF/dx)^T v = g``. :func:`custom_root` wires this into
autograd for any solver; :func:`stationary_point` builds ``F`` from an inner objective;
:func:`solve_cg` and :func:`solve_normal_cg` solve the adjoint system from
matrix-vector products only (the Jacobian is never formed).

The linear solvers are host-side loops: they read the residual norm each iteration to
stop early, so they run eagerly (and under ``torch.func.grad``), not under ``vmap`` or as
one ``torch.compile`` graph.

References:
  Blondel et al. 2022, "Efficient and Modular Implicit Differentiation", arXiv:2105.15183.
  Rajeswaran et al. 2019, "Meta-Learning with Implicit Gradients" (iMAML), arXiv:1909.04630.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import optree
import torch

from . import hyperparams
from . import tree as tr

__all__ = ["custom_root", "stationary_point", "hvp", "solve_cg", "solve_normal_cg"]

PyTree = Any
MatVec = Callable[[PyTree], PyTree]
LinearSolve = Callable[[MatVec, PyTree], PyTree]

_SYMMETRIC = "_functional_optim_symmetric_jacobian"


# ---------------------------------------------------------------------------------
# Validation


def _check_callable(name: str, value: Any) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")


def _check_maxiter(maxiter: Any) -> None:
    if maxiter is None:
        return
    if isinstance(maxiter, bool) or not isinstance(maxiter, int):
        raise TypeError(f"maxiter must be an int or None, got {type(maxiter).__name__}")
    if maxiter < 1:
        raise ValueError(f"Invalid maxiter: {maxiter} (expected 1 <= maxiter)")


def _check_tree(name: str, value: PyTree) -> list[torch.Tensor]:
    leaves = optree.tree_leaves(value)
    if not leaves:
        raise ValueError(f"{name} has no tensor leaves")
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"{name} must be a pytree of tensors, got a leaf of type {type(leaf).__name__}")
        if not leaf.is_floating_point():
            raise TypeError(f"{name} must hold floating-point tensors, got dtype {leaf.dtype}")
    return leaves


def _default_tol(leaves: list[torch.Tensor]) -> float:
    return 1e-10 if all(x.dtype == torch.float64 for x in leaves) else 1e-5


# ---------------------------------------------------------------------------------
# Linear solvers from matrix-vector products


def _cg(matvec: MatVec, b: PyTree, x0: PyTree | None, maxiter: int | None, tol: float | None,
        ridge: Any, name: str = "b") -> PyTree:
    b_leaves = _check_tree(name, b)
    if maxiter is None:
        maxiter = 10 * sum(x.numel() for x in b_leaves)
    if tol is None:
        tol = _default_tol(b_leaves)

    def op(v):
        av = matvec(v)
        return av if _is_zero(ridge) else tr.add_scale(av, ridge, v)

    if x0 is None:
        x = tr.zeros_like(b)
        r = b
    else:
        x = x0
        r = tr.sub(b, op(x0))
    p = r
    rs = tr.vdot(r, r)
    threshold = (tol * float(tr.norm(b).detach())) ** 2
    for _ in range(maxiter):
        if float(rs.detach()) <= threshold:
            break
        ap = op(p)
        pap = tr.vdot(p, ap)
        if float(pap.detach()) == 0.0:  # breakdown: the search direction is in the null space
            break
        alpha = rs / pap
        x = tr.add_scale(x, alpha, p)
        r = tr.add_scale(r, -alpha, ap)
        rs_new = tr.vdot(r, r)
        p = tr.add_scale(r, rs_new / rs, p)
        rs = rs_new
    return x


def _is_zero(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == 0


def solve_cg(matvec: MatVec, b: PyTree, x0: PyTree | None = None, *, maxiter: int | None = None,
             tol: float | None = None, ridge: float | torch.Tensor = 0.0) -> PyTree:
    """Solve ``(A + ridge I) x = b`` by conjugate gradient, ``A`` symmetric positive-definite.

    ``A`` is only seen through ``matvec(v) = A v`` on pytrees shaped like ``b`` (a Hessian-
    vector product, for instance), so it is never formed. From ``r_0 = b - A x_0``,
    ``p_0 = r_0``, each iteration takes ``alpha = <r, r> / <p, A p>``,
    ``x <- x + alpha p``, ``r <- r - alpha A p``, ``p <- r + (<r', r'> / <r, r>) p``, and
    stops once ``||r|| <= tol ||b||`` (the norm over all leaves as one vector). In exact
    arithmetic it terminates in at most ``n`` steps for ``n`` unknowns. A positive
    ``ridge`` makes a positive-semidefinite ``A`` definite (and damps an ill-conditioned
    one, as iMAML's proximal term does). Real tensors only.

    Host-side: it reads the residual norm each iteration (a sync on accelerators).

    Args:
      matvec: ``v -> A v``, linear, taking and returning pytrees structured like ``b``.
      b: the right-hand side, a pytree of floating-point tensors.
      x0: initial guess structured like ``b``. Default None: zeros.
      maxiter: the most iterations (>= 1). Default None: ten times the number of unknowns.
        Set it for large systems: CG on a model's Hessian usually runs 5 to 100 steps.
      tol: relative residual tolerance (>= 0). Default None: 1e-10 when every leaf of ``b``
        is float64, else 1e-5.
      ridge: ``ridge >= 0`` added to the diagonal of ``A`` (a number or 0-d tensor). Default 0.

    Returns:
      ``x``, structured like ``b``.

    Example:
      >>> import torch
      >>> from functional_optim.implicit import solve_cg
      >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
      >>> b = torch.tensor([1.0, 2.0], dtype=torch.float64)
      >>> x = solve_cg(lambda v: A @ v, b)
      >>> torch.allclose(A @ x, b, atol=1e-12), [round(float(v), 6) for v in x]
      (True, [0.090909, 0.636364])

    References:
      Hestenes and Stiefel 1952, "Methods of Conjugate Gradients for Solving Linear Systems".
      Rajeswaran et al. 2019 (iMAML), arXiv:1909.04630: CG on the regularised Hessian.
    """
    _check_callable("matvec", matvec)
    _check_maxiter(maxiter)
    if tol is not None:
        hyperparams.check_range("tol", tol, 0.0)
    hyperparams.check_range("ridge", ridge, 0.0)
    return _cg(matvec, b, x0, maxiter, tol, ridge)


def _transpose(matvec: MatVec, primal: PyTree) -> MatVec:
    # a linear map's vjp at any point is its transpose; evaluate it at zeros
    _, vjp_fn = torch.func.vjp(matvec, tr.zeros_like(primal))
    return lambda u: vjp_fn(u)[0]


def solve_normal_cg(matvec: MatVec, b: PyTree, x0: PyTree | None = None, *,
                    rmatvec: MatVec | None = None, maxiter: int | None = None,
                    tol: float | None = None, ridge: float | torch.Tensor = 0.0) -> PyTree:
    """Solve ``A x = b`` for a square (possibly non-symmetric) ``A`` by CG on the normal equations.

    Runs :func:`solve_cg` on ``(A^T A + ridge I) x = A^T b``, which is symmetric
    positive-(semi)definite for any ``A``; its solution solves ``A x = b`` when ``A`` is
    invertible. The price is the squared condition number and two products per iteration.
    ``A^T`` is taken from ``rmatvec`` when given, else from the vector-Jacobian product of
    the linear ``matvec`` (``torch.func.vjp``; ``matvec`` must be differentiable). The
    tolerance applies to the normal-equation residual ``||A^T (b - A x)|| <= tol ||A^T b||``.

    Args:
      matvec: ``v -> A v`` on pytrees structured like ``b``.
      b: the right-hand side, a pytree of floating-point tensors.
      x0: initial guess structured like ``b``. Default None: zeros.
      rmatvec: ``u -> A^T u``. Default None: derived from ``matvec`` by ``torch.func.vjp``.
      maxiter: the most CG iterations (>= 1). Default None: ten times the number of unknowns.
      tol: relative residual tolerance (>= 0). Default None: 1e-10 when every leaf of ``b``
        is float64, else 1e-5.
      ridge: ``ridge >= 0`` added to the diagonal of ``A^T A``. Default 0.

    Returns:
      ``x``, structured like ``b``.

    Example:
      >>> import torch
      >>> from functional_optim.implicit import solve_normal_cg
      >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)  # not symmetric
      >>> b = torch.tensor([5.0, 2.0], dtype=torch.float64)
      >>> x = solve_normal_cg(lambda v: A @ v, b)
      >>> [round(float(v), 8) for v in x]
      [1.0, 2.0]

    References:
      Blondel et al. 2022, "Efficient and Modular Implicit Differentiation", arXiv:2105.15183.
    """
    _check_callable("matvec", matvec)
    if rmatvec is not None:
        _check_callable("rmatvec", rmatvec)
    _check_maxiter(maxiter)
    if tol is not None:
        hyperparams.check_range("tol", tol, 0.0)
    hyperparams.check_range("ridge", ridge, 0.0)
    _check_tree("b", b)
    if rmatvec is None:
        rmatvec = _transpose(matvec, b if x0 is None else x0)
    return _cg(lambda v: rmatvec(matvec(v)), rmatvec(b), x0, maxiter, tol, ridge)


# ---------------------------------------------------------------------------------
# Optimality conditions


def stationary_point(objective_fn: Callable[..., torch.Tensor]) -> Callable[..., PyTree]:
    """The optimality condition "the gradient of ``objective_fn`` in its first argument is zero".

    Returns ``F(x, *args) = grad_x objective_fn(x, *args)`` (``torch.func.grad``), whose
    Jacobian ``dF/dx`` is the Hessian of the objective: symmetric, so :func:`custom_root`
    solves its adjoint system with :func:`solve_cg` by default. At an inner minimiser
    ``x*(theta) = argmin_x f(x, theta)``, ``F(x*, theta) = 0`` and
    ``dx*/dtheta = -(d^2f/dx^2)^{-1} d^2f/(dx dtheta)``.

    Args:
      objective_fn: ``(x, *args) -> scalar tensor``, ``x`` a pytree of tensors.

    Returns:
      ``optimality_fn(x, *args) -> pytree structured like x``.

    Example:
      >>> import torch
      >>> from functional_optim.implicit import stationary_point
      >>> F = stationary_point(lambda x, lam: ((x - 1.0) ** 2).sum() / 2 + lam * (x ** 2).sum() / 2)
      >>> F(torch.tensor([1.0, 3.0]), torch.tensor(0.5))
      tensor([0.5000, 3.5000])

    References:
      Blondel et al. 2022, "Efficient and Modular Implicit Differentiation", arXiv:2105.15183.
    """
    _check_callable("objective_fn", objective_fn)
    grad_fn = torch.func.grad(objective_fn)

    def optimality_fn(x: PyTree, *args: Any) -> PyTree:
        return grad_fn(x, *args)

    setattr(optimality_fn, _SYMMETRIC, True)
    optimality_fn.__doc__ = f"Gradient of {getattr(objective_fn, '__name__', 'the objective')} in its first argument."
    return optimality_fn


def hvp(objective_fn: Callable[..., torch.Tensor], x: PyTree, v: PyTree, *args: Any) -> PyTree:
    """The Hessian-vector product ``(d^2/dx^2 objective_fn(x, *args)) v``, forward-over-reverse.

    Computed as the Jacobian-vector product of ``torch.func.grad(objective_fn)`` along
    ``v`` (``torch.func.jvp``), which costs a small constant times one gradient and never
    forms the Hessian. Feed it to :func:`solve_cg` to solve Hessian systems: iMAML's
    ``(I + H / lam)^{-1} g`` is ``lam * solve_cg(lambda u: hvp(f, x, u), g, ridge=lam)``.

    Args:
      objective_fn: ``(x, *args) -> scalar tensor``.
      x: the point, a pytree of tensors.
      v: the direction, structured like ``x``.
      *args: further arguments of ``objective_fn`` (held constant).

    Returns:
      ``H v``, structured like ``x``.

    Example:
      >>> import torch
      >>> from functional_optim.implicit import hvp
      >>> f = lambda p: (p["a"] ** 3).sum() + 2 * (p["a"] * p["b"]).sum()
      >>> p = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0, 0.0])}
      >>> out = hvp(f, p, {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0])})
      >>> out["a"], out["b"]
      (tensor([6., 2.]), tensor([2., 0.]))

    References:
      Pearlmutter 1994, "Fast Exact Multiplication by the Hessian".
    """
    _check_callable("objective_fn", objective_fn)
    grad_fn = torch.func.grad(objective_fn)
    return torch.func.jvp(lambda y: grad_fn(y, *args), (x,), (v,))[1]


# ---------------------------------------------------------------------------------
# custom_root


class _Meta:
    """What the autograd function needs besides tensors (and what forward reports back)."""

    def __init__(self, solver, optimality_fn, solve, has_aux, init_spec, n_init, args_spec,
                 arg_leaves, tensor_pos):
        self.solver = solver
        self.optimality_fn = optimality_fn
        self.solve = solve
        self.has_aux = has_aux
        self.init_spec = init_spec
        self.n_init = n_init
        self.args_spec = args_spec
        self.arg_leaves = arg_leaves  # every leaf of args; tensor slots are filled per call
        self.tensor_pos = tensor_pos  # positions of the tensor leaves among arg_leaves
        self.solution_spec = None  # set by forward
        self.aux = None  # set by forward when has_aux

    def args(self, tensors):
        leaves = list(self.arg_leaves)
        for pos, t in zip(self.tensor_pos, tensors):
            leaves[pos] = t
        return optree.tree_unflatten(self.args_spec, leaves)


class _ImplicitRoot(torch.autograd.Function):
    """Identity on the solver's answer in forward; the implicit-function VJP in backward."""

    @staticmethod
    def forward(meta: _Meta, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        init_leaves = [t.detach() for t in tensors[:meta.n_init]]
        arg_tensors = [t.detach() for t in tensors[meta.n_init:]]
        init = optree.tree_unflatten(meta.init_spec, init_leaves)
        # grad mode on so a solver may call torch.autograd.grad on its own detached leaves;
        # nothing here reaches the outer graph (inputs are detached, outputs detached below)
        with torch.enable_grad():
            out = meta.solver(init, *meta.args(arg_tensors))
        if meta.has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError("with has_aux=True the solver must return a (solution, aux) pair, "
                                f"got {type(out).__name__}")
            out, aux = out
            meta.aux = optree.tree_map(lambda a: a.detach() if isinstance(a, torch.Tensor) else a, aux)
        leaves, meta.solution_spec = optree.tree_flatten(out)
        if not leaves or not all(isinstance(x, torch.Tensor) and x.is_floating_point() for x in leaves):
            raise TypeError("the solver must return a pytree of floating-point tensors (the solution)")
        inputs = {t.data_ptr() for t in tensors if t.numel()}
        return tuple(x.detach().clone() if x.numel() and x.data_ptr() in inputs else x.detach()
                     for x in leaves)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        meta = inputs[0]
        ctx.meta = meta
        ctx.n_out = len(output)
        ctx.save_for_backward(*output, *inputs[1 + meta.n_init:])

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        meta = ctx.meta
        saved = ctx.saved_tensors
        solution = optree.tree_unflatten(meta.solution_spec, list(saved[:ctx.n_out]))
        arg_tensors = list(saved[ctx.n_out:])
        cotangent = optree.tree_unflatten(meta.solution_spec, list(grad_outputs))
        needs = ctx.needs_input_grad[1 + meta.n_init:]
        wanted = [i for i, t in enumerate(arg_tensors)
                  if needs[i] and (t.is_floating_point() or t.is_complex())]
        grads: list[torch.Tensor | None] = [None] * (1 + meta.n_init + len(arg_tensors))
        if not wanted:
            return tuple(grads)
        args = meta.args(arg_tensors)

        # adjoint system (dF/dx)^T v = cotangent, with dF/dx^T u from one linearisation
        value, vjp_x = torch.func.vjp(lambda x: meta.optimality_fn(x, *args), solution)
        _check_same_structure(value, solution)
        v = meta.solve(lambda u: vjp_x(u)[0], cotangent)

        # -v^T dF/dtheta, for the tensor leaves of args that need a gradient
        def f_theta(*ts):
            full = list(arg_tensors)
            for i, t in zip(wanted, ts):
                full[i] = t
            return meta.optimality_fn(solution, *meta.args(full))

        _, vjp_theta = torch.func.vjp(f_theta, *[arg_tensors[i] for i in wanted])
        for i, g in zip(wanted, vjp_theta(v)):
            grads[1 + meta.n_init + i] = -g
        return tuple(grads)


def _check_same_structure(value: PyTree, solution: PyTree) -> None:
    got, spec = optree.tree_flatten(value)
    want, want_spec = optree.tree_flatten(solution)
    if spec != want_spec or any(not isinstance(g, torch.Tensor) or g.shape != w.shape
                                for g, w in zip(got, want)):
        raise ValueError(
            "optimality_fn must return a pytree structured and shaped like the solution: expected "
            f"{tr.describe(want_spec)} with shapes {[tuple(w.shape) for w in want]}, got "
            f"{tr.describe(spec)} with shapes {[tuple(getattr(g, 'shape', ())) for g in got]}")


def custom_root(optimality_fn: Callable[..., PyTree], solve: LinearSolve | None = None,
                has_aux: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make a solver's answer differentiable through its optimality condition.

    ``solver(init_params, *args) -> x*`` finds ``x*`` with ``optimality_fn(x*, *args) = 0``
    (a root). The decorated solver returns the same ``x*``, and gradients of anything
    computed from it flow to the tensors in ``args`` by the implicit function theorem::

        dx*/dtheta = -(dF/dx)^{-1} dF/dtheta,      F = optimality_fn, theta = args

    In reverse mode, a cotangent ``g`` on ``x*`` gives ``v`` solving the adjoint system
    ``(dF/dx)^T v = g`` (``solve`` on the matrix-free product ``u -> (dF/dx)^T u``, a
    ``torch.func.vjp``), then ``-(dF/dtheta)^T v`` for each tensor leaf of ``args``. Nothing
    flows through the solver's iterations: it runs on detached inputs (grad mode on, so it
    may use ``torch.autograd.grad`` or ``torch.func.grad`` internally), and it is only
    called once, in forward. The result is exact to the extent that ``x*`` satisfies the
    condition and ``solve`` converges.

    Works with ``.backward()``, ``torch.autograd.grad`` and ``torch.func.grad``/``vjp``
    (not ``vmap``: the linear solvers stop on a residual read). Only tensors passed through
    ``args`` get gradients; tensors ``optimality_fn`` or the solver close over are
    constants. ``init_params`` gets no gradient (the root does not depend on it).

    Args:
      optimality_fn: ``F(x, *args) -> pytree structured like x``, zero at the solution; the
        gradient of an inner objective (:func:`stationary_point`) or any root condition
        (e.g. a fixed point ``T(x, *args) - x``). Must be differentiable in ``x`` and ``args``.
      solve: ``solve(matvec, b) -> x`` for the adjoint system ``matvec(x) = b``, e.g.
        ``functools.partial(solve_cg, maxiter=20, ridge=1e-3)``. Default None:
        :func:`solve_cg` when ``optimality_fn`` comes from :func:`stationary_point` (its
        Jacobian is a symmetric Hessian), else :func:`solve_normal_cg`, which is correct for
        any invertible Jacobian. Pass ``solve=solve_cg`` for a hand-written gradient
        condition when the inner objective is convex.
      has_aux: the solver returns ``(solution, aux)``; ``aux`` is returned as is (detached).
        Default False.

    Returns:
      A decorator ``solver -> solver'`` with the signature ``solver'(init_params, *args)``.

    Example:
      >>> import torch
      >>> from functional_optim.implicit import custom_root, stationary_point
      >>> def inner(x, lam):  # argmin_x ||x - 1||^2 / 2 + lam ||x||^2 / 2 = 1 / (1 + lam)
      ...     return ((x - 1.0) ** 2).sum() / 2 + lam * (x ** 2).sum() / 2
      >>> @custom_root(stationary_point(inner))
      ... def argmin(x, lam):
      ...     for _ in range(100):  # gradient descent, step 0.5
      ...         x = x - 0.5 * torch.func.grad(inner)(x, lam)
      ...     return x
      >>> lam = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
      >>> x = argmin(torch.zeros(2, dtype=torch.float64), lam)
      >>> (g,) = torch.autograd.grad(x.sum(), lam)  # d/dlam 2 / (1 + lam) = -0.5
      >>> round(float(x[0].detach()), 10), round(float(g), 10)
      (0.5, -0.5)

    References:
      Blondel et al. 2022, "Efficient and Modular Implicit Differentiation", arXiv:2105.15183.
      Rajeswaran et al. 2019, "Meta-Learning with Implicit Gradients", arXiv:1909.04630.
    """
    _check_callable("optimality_fn", optimality_fn)
    if solve is None:
        solve = solve_cg if getattr(optimality_fn, _SYMMETRIC, False) else solve_normal_cg
    _check_callable("solve", solve)
    if not isinstance(has_aux, bool):
        raise TypeError(f"has_aux must be a bool, got {type(has_aux).__name__}")

    def decorator(solver: Callable[..., Any]) -> Callable[..., Any]:
        _check_callable("solver", solver)

        def wrapped(init_params: PyTree, *args: Any) -> Any:
            init_leaves, init_spec = optree.tree_flatten(init_params)
            if not all(isinstance(x, torch.Tensor) for x in init_leaves):
                raise TypeError("init_params must be a pytree of tensors")
            arg_leaves, args_spec = optree.tree_flatten(args)
            tensor_pos = [i for i, x in enumerate(arg_leaves) if isinstance(x, torch.Tensor)]
            meta = _Meta(solver, optimality_fn, solve, has_aux, init_spec, len(init_leaves),
                         args_spec, arg_leaves, tensor_pos)
            out = _ImplicitRoot.apply(meta, *init_leaves, *[arg_leaves[i] for i in tensor_pos])
            solution = optree.tree_unflatten(meta.solution_spec, list(out))
            return (solution, meta.aux) if has_aux else solution

        return functools.wraps(solver)(wrapped)

    return decorator
