"""Line searches along a fixed direction, with torch.optim.LBFGS's numerics.

:func:`strong_wolfe` is the strong-Wolfe search ``torch.optim.LBFGS`` runs with
``line_search_fn="strong_wolfe"`` (More-Thuente style bracketing then zoom, with cubic
interpolation), reproduced operation for operation so that L-BFGS trajectories match
torch's to rounding. :func:`cubic_interpolate` is its interpolation step.

These are host-side algorithms: they branch on loss values and call the objective a
data-dependent number of times, so they read scalars with ``.item()`` and are neither
``torch.compile``-able as one graph nor ``vmap``-able. The objective is a function of
the step size only; callers close over the point and the direction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

__all__ = ["StrongWolfeResult", "cubic_interpolate", "strong_wolfe"]

Scalar = Any  # a Python float or a 0-d tensor (the types flow as in torch's implementation)


class StrongWolfeResult(NamedTuple):
    """What :func:`strong_wolfe` returns."""

    value: float  # objective at the accepted step
    grad: torch.Tensor  # flat gradient at the accepted step (shape of the direction)
    stepsize: Scalar  # the accepted step size t (float or 0-d tensor)
    num_evals: int  # objective evaluations made by the search


def cubic_interpolate(x1: Scalar, f1: Scalar, g1: Scalar, x2: Scalar, f2: Scalar, g2: Scalar,
                      bounds: tuple[Scalar, Scalar] | None = None) -> Scalar:
    """Minimiser of the cubic through ``(x1, f1)`` and ``(x2, f2)`` with slopes ``g1``, ``g2``.

    The result is clamped to ``bounds`` (default: the interval between ``x1`` and ``x2``);
    when the cubic has no real stationary point, the middle of the bounds is returned.
    Slopes are 0-d tensors (as in torch, where they are directional derivatives).

    Example:
      >>> import torch
      >>> from functional_optim.linesearch import cubic_interpolate
      >>> # f(x) = (x - 1)**2 sampled at 0 and 3
      >>> float(cubic_interpolate(0.0, 1.0, torch.tensor(-2.0), 3.0, 4.0, torch.tensor(4.0)))
      1.0
    """
    if bounds is None:
        low, high = (x1, x2) if x1 <= x2 else (x2, x1)
    else:
        low, high = bounds
    # slope-corrected secant term and the discriminant of the cubic's derivative
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    discriminant = d1**2 - g1 * g2
    if not discriminant >= 0:
        return (low + high) / 2.0
    d2 = discriminant.sqrt()
    if x1 <= x2:
        minimiser = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        minimiser = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(minimiser, low), high)


class _Point:
    """One evaluated trial step: step size, value, gradient and slope along the direction."""

    __slots__ = ("t", "f", "g", "gtd")

    def __init__(self, t: Scalar, f: Scalar, g: torch.Tensor, gtd: Scalar):
        self.t, self.f, self.g, self.gtd = t, f, g, gtd


def strong_wolfe(value_and_grad_at: Callable[[Scalar], tuple[float, torch.Tensor]],
                 direction: torch.Tensor, stepsize: Scalar, value: float, grad: torch.Tensor,
                 slope: Scalar, *, c1: float = 1e-4, c2: float = 0.9,
                 tolerance_change: float = 1e-9, max_linesearch_steps: int = 25) -> StrongWolfeResult:
    """Find a step size satisfying the strong Wolfe conditions (torch.optim.LBFGS's search).

    With ``phi(t) = f(x + t d)``, a step ``t`` is accepted when
    ``phi(t) <= phi(0) + c1 t phi'(0)`` (sufficient decrease) and
    ``|phi'(t)| <= -c2 phi'(0)`` (strong curvature). Starting from ``stepsize``, the
    search first brackets an interval containing such a step (extrapolating with
    :func:`cubic_interpolate` bounded to ``[t + 0.01 (t - t_prev), 10 t]``), then zooms in
    with cubic interpolation, keeping trials at least a tenth of the bracket away from its
    ends after insufficient progress. It stops when the bracket is narrower than
    ``tolerance_change / max|d|`` or after ``max_linesearch_steps`` iterations and then
    returns the best point found (the low end of the bracket). If the bracketing phase
    uses all its iterations, the bracket becomes ``[0, t]``.

    The objective is called once more than the iteration count at most
    (``num_evals <= max_linesearch_steps + 1``). Host-side: branches read loss and
    slope values. A NaN objective at an otherwise acceptable step raises
    FloatingPointError (torch's implementation fails there with an IndexError).

    Args:
      value_and_grad_at: ``t -> (phi(t) as a Python float, flat gradient at x + t d)``.
      direction: the flat search direction ``d``.
      stepsize: the initial trial step ``t`` (> 0).
      value: ``phi(0)``, the objective at the starting point.
      grad: the flat gradient at the starting point.
      slope: ``phi'(0) = <grad, d>`` (negative for a descent direction), a 0-d tensor.
      c1: sufficient-decrease constant, in (0, c2). Default 1e-4.
      c2: curvature constant, in (c1, 1). Default 0.9.
      tolerance_change: smallest bracket width times ``max|d|``. Default 1e-9.
      max_linesearch_steps: iterations allowed after the first evaluation. Default 25.

    Returns:
      A :class:`StrongWolfeResult` ``(value, grad, stepsize, num_evals)``.

    Example:
      >>> import torch
      >>> from functional_optim.linesearch import strong_wolfe
      >>> x = torch.tensor([3.0], dtype=torch.float64)
      >>> d = torch.tensor([-1.0], dtype=torch.float64)
      >>> def at(t):  # f(y) = y**2 along x + t d
      ...     y = x + t * d
      ...     return float((y ** 2).sum()), 2 * y
      >>> res = strong_wolfe(at, d, 10.0, 9.0, 2 * x, (2 * x).dot(d))  # overshoots, then zooms
      >>> round(float(res.stepsize), 6), res.num_evals
      (3.0, 2)
    """
    d_norm = direction.abs().max()
    start = _Point(0, value, grad, slope)

    def evaluate(t: Scalar) -> _Point:
        f_t, g_t = value_and_grad_at(t)
        return _Point(t, f_t, g_t, g_t.dot(direction))

    def armijo_fails(p: _Point) -> bool:
        return bool(p.f > (value + c1 * p.t * slope))

    def curvature_holds(p: _Point) -> bool:
        return bool(abs(p.gtd) <= -c2 * slope)

    trial = evaluate(stepsize)
    num_evals = 1
    previous = start
    bracket: list[_Point] | None = None
    done = False
    steps = 0

    # Bracketing phase: grow the step until an interval must contain an acceptable one.
    while steps < max_linesearch_steps:
        if armijo_fails(trial) or (steps > 1 and trial.f >= previous.f):
            bracket = [previous, trial]
            break
        if curvature_holds(trial):
            bracket, done = [trial], True
            break
        if trial.gtd >= 0:
            bracket = [previous, trial]
            break
        t_next = cubic_interpolate(previous.t, previous.f, previous.gtd, trial.t, trial.f, trial.gtd,
                                   bounds=(trial.t + 0.01 * (trial.t - previous.t), trial.t * 10))
        previous = trial
        trial = evaluate(t_next)
        num_evals += 1
        steps += 1

    if steps == max_linesearch_steps:  # out of iterations: fall back to [0, t]
        bracket = [_Point(0, value, grad, None), _Point(trial.t, trial.f, trial.g, None)]

    # Zoom phase: shrink the bracket around an acceptable step.
    low, high = (0, 1) if bracket[0].f <= bracket[-1].f else (1, 0)
    if low >= len(bracket):  # an accepted trial whose value is NaN (torch: IndexError)
        raise FloatingPointError(
            f"strong_wolfe: the objective is NaN at the accepted step {float(bracket[0].t)!r}; "
            "the loss is not finite along the search direction")
    insufficient_progress = False
    while not done and steps < max_linesearch_steps:
        a, b = bracket
        if abs(b.t - a.t) * d_norm < tolerance_change:
            break
        t = cubic_interpolate(a.t, a.f, a.gtd, b.t, b.f, b.gtd)
        # keep away from the bracket's ends when progress stalls
        right, left = max(a.t, b.t), min(a.t, b.t)
        margin = 0.1 * (right - left)
        if min(right - t, t - left) < margin:
            if insufficient_progress or t >= right or t <= left:
                t = right - margin if abs(t - right) < abs(t - left) else left + margin
                insufficient_progress = False
            else:
                insufficient_progress = True
        else:
            insufficient_progress = False

        trial = evaluate(t)
        num_evals += 1
        steps += 1

        if armijo_fails(trial) or trial.f >= bracket[low].f:
            bracket[high] = trial
            low, high = (0, 1) if bracket[0].f <= bracket[1].f else (1, 0)
        else:
            if curvature_holds(trial):
                done = True
            elif trial.gtd * (bracket[high].t - bracket[low].t) >= 0:
                bracket[high] = bracket[low]  # the old low end becomes the high end
            bracket[low] = trial

    best = bracket[low]
    return StrongWolfeResult(best.f, best.g, best.t, num_evals)
