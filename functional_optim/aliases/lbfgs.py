"""L-BFGS with torch.optim.LBFGS's arguments and numerics: one ``update`` is one ``step(closure)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import optree
import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation
from ..hyperparams import check_number, check_range, concrete
from ..linesearch import strong_wolfe
from ..tree import describe

__all__ = ["LBFGSState", "lbfgs"]

_MISSING = object()
_SCALAR_DTYPE = torch.float64  # Python-float quantities of torch's state (t, prev_loss)


class LineSearchFnError(ValueError, RuntimeError):
    """An unknown ``line_search_fn``: a ValueError by this library's rule, and a
    RuntimeError as torch.optim.LBFGS raises (at its first step) for the same input."""


class LBFGSState(NamedTuple):
    """State of :func:`lbfgs`: torch.optim.LBFGS's state as fixed-size tensors.

    All params are seen as one flat vector of ``n`` elements (complex params as their
    real and imaginary parts), in the params tree's leaf order (optree's: dict keys
    sorted; torch's param-list order when params are a list) and the promoted dtype of
    the params.
    The history is a ring buffer of ``history_size`` rows: row
    ``(history_start + i) % history_size`` holds torch's list entry ``i`` for
    ``i < history_len`` (oldest first). Each row starts on a 64-byte boundary (the
    buffers are views of padded storage), as a freshly allocated tensor does: vectorised
    dot products round differently on misaligned data, and torch keeps each entry in a
    tensor of its own.
    """

    func_evals: torch.Tensor  # 0-d int32: objective evaluations over the optimizer's life
    n_iter: torch.Tensor  # 0-d int32: L-BFGS iterations over the optimizer's life
    d: torch.Tensor  # (n,): the last search direction
    t: torch.Tensor  # 0-d float64: the last step size
    old_dirs: torch.Tensor  # (history_size, n): gradient differences y
    old_stps: torch.Tensor  # (history_size, n): steps s = t * d
    ro: torch.Tensor  # (history_size,): 1 / <y, s>
    history_len: torch.Tensor  # 0-d int32: valid rows (torch's len(old_dirs))
    history_start: torch.Tensor  # 0-d int32: row of the oldest entry
    H_diag: torch.Tensor  # 0-d: scale of the initial inverse Hessian, <y, s> / <y, y>
    prev_flat_grad: torch.Tensor  # (n,): flat gradient at the start of the last iteration
    prev_loss: torch.Tensor  # 0-d float64: loss at the start of the last iteration


# ---------------------------------------------------------------------------------
# The params tree seen as one flat vector (torch's _gather_flat_grad / _add_grad)


class _Layout:
    """Where each param leaf sits in the flat vector."""

    def __init__(self, params: Any):
        leaves, self.spec = optree.tree_flatten(params, none_is_leaf=True)
        self.present = [i for i, p in enumerate(leaves) if p is not None]
        self.leaves = [leaves[i] for i in self.present]
        for p in self.leaves:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"lbfgs params must be tensors, got a {type(p).__name__} leaf")
            if not (p.is_floating_point() or p.is_complex()):
                raise TypeError(f"lbfgs params must be floating point or complex, got {p.dtype}")
        if not self.leaves:
            raise ValueError("lbfgs got a params tree with no tensor leaves")
        self.numels = [p.numel() * (2 if p.is_complex() else 1) for p in self.leaves]
        self.numel = sum(self.numels)
        dtype = _real_dtype(self.leaves[0])
        for p in self.leaves[1:]:
            dtype = torch.promote_types(dtype, _real_dtype(p))
        self.dtype = dtype
        self.device = self.leaves[0].device

    def flatten_grads(self, grads: Any) -> torch.Tensor:
        leaves, spec = optree.tree_flatten(grads, none_is_leaf=True)
        if spec != self.spec:
            raise ValueError(f"grads do not match the structure of params: expected "
                             f"{describe(self.spec)}, got {describe(spec)}")
        views = []
        for i, p in zip(self.present, self.leaves):
            g = leaves[i]
            if g is None:  # no gradient counts as zero, as in torch
                g = torch.zeros_like(p)
            elif g.is_sparse:
                g = g.to_dense()
            views.append(_real(g).reshape(-1))
        return torch.cat(views, 0)

    def moved(self, leaves: list[torch.Tensor], t: Any, d: torch.Tensor) -> list[torch.Tensor]:
        """``p + t * d`` per leaf, rounded to each param's dtype as torch's in-place ``add_``."""
        alpha = float(t)
        out, offset = [], 0
        for p, n in zip(leaves, self.numels):
            real = _real(p)
            step = d[offset:offset + n].view_as(real)
            new = torch.add(real, step, alpha=alpha).to(real.dtype)
            out.append(torch.view_as_complex(new) if p.is_complex() else new)
            offset += n
        return out

    def rebuild(self, leaves: list[torch.Tensor]) -> Any:
        full: list[Any] = [None] * self.spec.num_leaves
        for i, leaf in zip(self.present, leaves):
            full[i] = leaf
        return optree.tree_unflatten(self.spec, full)


def _real_dtype(p: torch.Tensor) -> torch.dtype:
    return p.real.dtype if p.is_complex() else p.dtype


def _real(x: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(x) if x.is_complex() else x


def _objective(value_fn: Callable[[Any], Any], layout: _Layout
               ) -> Callable[[list[torch.Tensor]], tuple[float, torch.Tensor]]:
    """``leaves -> (loss as a float, flat gradient)`` through ``value_fn`` and torch.autograd."""

    def evaluate(leaves: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
        with torch.enable_grad():
            inputs = [p.detach().requires_grad_(True) for p in leaves]
            loss = value_fn(layout.rebuild(inputs))
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise TypeError(f"value_fn must return the loss as a one-element tensor, got {got}")
            if loss.requires_grad:
                grads = torch.autograd.grad(loss.reshape(()), inputs, allow_unused=True,
                                            materialize_grads=True)
            else:  # a loss that does not depend on the params
                grads = [torch.zeros_like(p) for p in inputs]
        return float(loss.detach()), layout.flatten_grads(layout.rebuild(list(grads)))

    return evaluate


# ---------------------------------------------------------------------------------
# The optimizer


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"Invalid {name}: {value} (expected {name} >= {low})")


def lbfgs(lr: float | torch.Tensor = 1, max_iter: int = 20, max_eval: int | None = None,
          tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 100,
          line_search_fn: str | None = None) -> GradientTransformation:
    r"""L-BFGS exactly as ``torch.optim.LBFGS`` (same names, order and defaults).

    One ``update`` reproduces one ``LBFGS.step(closure)``: up to ``max_iter`` L-BFGS
    iterations (and ``max_eval`` objective evaluations) from ``params``, returning
    ``updates = new_params - params``. With ``x`` all params as one flat vector, ``g`` its
    gradient and ``k`` the optimizer's lifetime iteration count, each iteration:

    .. math::

       y = g - g_{prev},\ s = t\,d;\ \text{if } y^\top s > 10^{-10}:
         \text{push } (y, s, 1/y^\top s),\ H_{diag} = y^\top s / y^\top y \\
       d = -H g \ \text{(two-loop recursion over the last } history\_size
         \text{ pairs; } d = -g \text{ at } k = 1) \\
       t = lr \cdot \min(1, 1/\|g\|_1) \text{ at } k = 1, \text{ else } lr;\
         \text{stop if } g^\top d > -tolerance\_change \\
       x \leftarrow x + t\,d \ \text{(}t\text{ from the strong-Wolfe search with }
         line\_search\_fn=\text{"strong\_wolfe"})

    and it stops early when ``max|g| <= tolerance_grad``, ``max|t d| <= tolerance_change``
    or the loss changes by less than ``tolerance_change`` (the line search's own bracket
    tolerance is always 1e-9, as in torch, and it may use ``max_eval`` minus the
    evaluations already made). A None gradient counts as
    zeros, sparse gradients are densified, complex params are optimised over their real
    and imaginary parts (all as torch).

    ``update(grads, state, params, *, value, value_fn, donate=False)`` needs, keyword-only:

    * ``value``: the loss at ``params`` (a number or one-element tensor), ``grads`` being
      its gradient (torch's first closure call of the step);
    * ``value_fn``: ``params -> loss``, called with a tree shaped like ``params`` to
      re-evaluate the loss at trial points (torch's later closure calls). It is called
      under ``torch.enable_grad()`` with fresh leaf tensors that require grad, and must
      return the loss as a one-element tensor computed from them differentiably (e.g.
      ``torch.func.functional_call(model, params, x)``); it must not modify them in
      place. Gradients are taken with ``torch.autograd.grad`` (not ``torch.func``), so any
      autograd-differentiable code works; leaves the loss does not reach get zero
      gradient. Like torch's closure it must be deterministic.

    Missing either raises TypeError naming it. With ``as_params=True`` the update returns
    the new params themselves in place of ``new_params - params`` (in float32 adding that
    difference back can round once more than torch's in-place move; ``adapters.LBFGS``
    uses it). With ``donate=True`` the state's buffers
    are updated in place (the caller owns them; if ``value_fn`` raises mid-step, the
    donated state may be partly updated, while without donation nothing passed in is
    ever modified). The flat vector follows the params tree's leaf order (see
    :class:`LBFGSState`). Exempt from the ``torch.compile`` and
    ``vmap`` contracts: like torch's, this algorithm branches on loss and gradient values
    and calls ``value_fn`` a data-dependent number of times, so it reads scalars with
    ``.item()``. The history is preallocated: the state holds
    ``(2 * history_size + 2) * n`` elements for ``n`` param elements.

    Args:
      lr: learning rate (initial step size) >= 0, a number or 0-d tensor. Default 1.
      max_iter: L-BFGS iterations per update, >= 1. Default 20.
      max_eval: objective evaluations per update, >= 1 (counting ``value``).
        Default ``max_iter * 5 // 4``.
      tolerance_grad: stop when ``max|g| <= tolerance_grad``. Default 1e-7.
      tolerance_change: stop on step or loss changes below it. Default 1e-9.
      history_size: pairs ``(y, s)`` kept, >= 1. Default 100.
      line_search_fn: None (fixed step ``t``) or ``"strong_wolfe"``. Default None.

    Example:
      >>> import torch, functional_optim as fo
      >>> def loss_fn(p):
      ...     return ((p["w"] - torch.tensor([1.0, -2.0])) ** 2).sum()
      >>> params = {"w": torch.zeros(2)}
      >>> opt = fo.lbfgs(line_search_fn="strong_wolfe")
      >>> state = opt.init(params)
      >>> value, grads = torch.func.grad_and_value(loss_fn)(params)[::-1]
      >>> updates, state = opt.update(grads, state, params, value=value, value_fn=loss_fn)
      >>> fo.apply_updates(params, updates)["w"].round(decimals=4)
      tensor([ 1., -2.])
    """
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    check_number("lr", lr)
    v = concrete(lr)
    if v is not None and not 0.0 <= v:
        raise ValueError(f"Invalid learning rate: {lr}")
    _check_int("max_iter", max_iter, 1)
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    _check_int("max_eval", max_eval, 1)
    check_range("tolerance_grad", tolerance_grad)
    check_range("tolerance_change", tolerance_change)
    _check_int("history_size", history_size, 1)
    if line_search_fn not in (None, "strong_wolfe"):
        raise LineSearchFnError(f"line_search_fn must be None or 'strong_wolfe' (torch: only "
                                f"'strong_wolfe' is supported), got {line_search_fn!r}")

    def init_fn(params):
        layout = _Layout(params)
        n, dtype, device = layout.numel, layout.dtype, layout.device

        def zeros(*shape, dtype=dtype):
            return torch.zeros(shape, dtype=dtype, device=device)

        return LBFGSState(
            func_evals=steps.zero_count(device), n_iter=steps.zero_count(device),
            d=zeros(n), t=zeros(dtype=_SCALAR_DTYPE),
            old_dirs=history_rows(history_size, n, dtype, device),
            old_stps=history_rows(history_size, n, dtype, device), ro=zeros(history_size),
            history_len=steps.zero_count(device), history_start=steps.zero_count(device),
            H_diag=torch.ones((), dtype=dtype, device=device), prev_flat_grad=zeros(n),
            prev_loss=zeros(dtype=_SCALAR_DTYPE))

    def update_fn(updates, state, params=None, *, value=_MISSING, value_fn=_MISSING,
                  as_params=False, donate=False, **extra):
        del extra
        missing = [name for name, arg in (("value", value), ("value_fn", value_fn))
                   if arg is _MISSING or arg is None]
        if missing:
            raise TypeError(
                f"lbfgs update needs the keyword argument(s) {', '.join(missing)}: value is the "
                "loss at params (grads being its gradient) and value_fn(params) -> loss "
                "re-evaluates it; call update(grads, state, params, value=..., value_fn=...)")
        if not callable(value_fn):
            raise TypeError(f"value_fn must be callable (params -> loss), got {type(value_fn).__name__}")
        if params is None:
            raise TypeError("lbfgs update needs params (the point where value and grads were computed)")
        if not isinstance(state, LBFGSState):
            raise ValueError("state must be an LBFGSState (from lbfgs(...).init), got "
                             f"{type(state).__name__}")
        layout = _Layout(params)
        if state.d.shape != (layout.numel,) or state.old_dirs.shape[0] != history_size:
            raise ValueError(f"state does not match params: state holds {tuple(state.d.shape)} "
                             f"elements and {state.old_dirs.shape[0]} history rows, params have "
                             f"{layout.numel} elements and history_size is {history_size}")
        flat_grad = layout.flatten_grads(updates).to(layout.dtype)
        options = _Options(float(lr), max_iter, max_eval, tolerance_grad, tolerance_change,
                           line_search_fn)
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"value must be the loss (one element), got shape {tuple(value.shape)}")
            value = value.detach()
        new_leaves, new_state = _step(layout, state, flat_grad, float(value),
                                      _objective(value_fn, layout), options, donate)
        if as_params:
            return layout.rebuild(new_leaves), new_state
        return layout.rebuild(k.sub(new_leaves, layout.leaves)), new_state

    return GradientTransformation(init_fn, update_fn)


_ROW_ALIGNMENT = 64  # bytes: the CPU allocator's alignment (CUDA's is larger still)


def history_rows(rows: int, n: int, dtype: torch.dtype, device: Any,
                 like: torch.Tensor | None = None) -> torch.Tensor:
    """A ``(rows, n)`` history buffer whose rows are 64-byte aligned (zeros, or a copy of
    ``like``); see :class:`LBFGSState`."""
    per_row = max(1, _ROW_ALIGNMENT // torch.empty((), dtype=dtype).element_size())
    padded = -(-max(n, 1) // per_row) * per_row
    out = torch.zeros(rows, padded, dtype=dtype, device=device)[:, :n]
    if like is not None:
        out.copy_(like)
    return out


class _Options(NamedTuple):
    lr: float
    max_iter: int
    max_eval: int
    tolerance_grad: float
    tolerance_change: float
    line_search_fn: str | None


class _History:
    """torch's ``old_dirs``/``old_stps``/``ro`` lists, kept in the state's ring buffers.

    Without donation the buffers are copied before the first write (copy on write).
    """

    def __init__(self, state: LBFGSState, donate: bool):
        self.dirs, self.stps, self.ro = state.old_dirs, state.old_stps, state.ro
        self.size = self.dirs.shape[0]
        self.len, self.start = int(state.history_len), int(state.history_start)
        self.owned = donate

    def clear(self) -> None:
        self.len = self.start = 0

    def rows(self) -> list[int]:
        """Buffer rows of the entries, oldest first."""
        return [(self.start + i) % self.size for i in range(self.len)]

    def push(self, y: torch.Tensor, s: torch.Tensor, ro: torch.Tensor) -> None:
        if not self.owned:
            self.dirs, self.stps = (history_rows(*b.shape, b.dtype, b.device, like=b)
                                    for b in (self.dirs, self.stps))
            self.ro = self.ro.clone()
            self.owned = True
        if self.len == self.size:  # full: overwrite the oldest entry
            row = self.start
            self.start = (self.start + 1) % self.size
        else:
            row = (self.start + self.len) % self.size
            self.len += 1
        self.dirs[row].copy_(y)
        self.stps[row].copy_(s)
        self.ro[row].copy_(ro)


def _direction(flat_grad: torch.Tensor, history: _History, H_diag: Any) -> torch.Tensor:
    """``-H g`` by the two-loop recursion (torch's operation order)."""
    rows = history.rows()
    al: list[Any] = [None] * len(rows)
    q = flat_grad.neg()
    for i in range(len(rows) - 1, -1, -1):
        al[i] = history.stps[rows[i]].dot(q) * history.ro[rows[i]]
        q.add_(history.dirs[rows[i]], alpha=-al[i])
    r = torch.mul(q, H_diag)
    for i, row in enumerate(rows):
        be_i = history.dirs[row].dot(r) * history.ro[row]
        r.add_(history.stps[row], alpha=al[i] - be_i)
    return r


def _count(value: int, like: torch.Tensor, donate: bool) -> torch.Tensor:
    if donate:
        return like.fill_(value)
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _keep(new: torch.Tensor, buffer: torch.Tensor, donate: bool) -> torch.Tensor:
    return buffer.copy_(new) if donate else new


def _step(layout: _Layout, state: LBFGSState, flat_grad: torch.Tensor, loss: float,
          evaluate: Callable[[list[torch.Tensor]], tuple[float, torch.Tensor]],
          o: _Options, donate: bool) -> tuple[list[torch.Tensor], LBFGSState]:
    """One ``torch.optim.LBFGS.step``: new param leaves and the new state."""
    func_evals = int(state.func_evals) + 1  # ``value`` is the step's first evaluation
    current_evals = 1
    leaves = list(layout.leaves)
    if flat_grad.abs().max() <= o.tolerance_grad:  # already optimal: no move
        return leaves, state._replace(func_evals=_count(func_evals, state.func_evals, donate))

    lifetime_iter = int(state.n_iter)
    d, t, H_diag = state.d, state.t.item(), state.H_diag
    prev_flat_grad, prev_loss = state.prev_flat_grad, state.prev_loss.item()
    history = _History(state, donate)
    opt_cond = False
    n_iter = 0
    while n_iter < o.max_iter:
        n_iter += 1
        lifetime_iter += 1

        # direction
        if lifetime_iter == 1:
            d = flat_grad.neg()
            history.clear()
            H_diag = 1
        else:
            y = flat_grad.sub(prev_flat_grad)
            s = d.mul(t)
            ys = y.dot(s)
            if ys > 1e-10:  # curvature condition: keep the pair
                history.push(y, s, 1.0 / ys)
                H_diag = ys / y.dot(y)
            d = _direction(flat_grad, history, H_diag)
        prev_flat_grad = flat_grad  # never modified in place below
        prev_loss = loss

        # step length
        t = min(1.0, 1.0 / flat_grad.abs().sum()) * o.lr if lifetime_iter == 1 else o.lr
        gtd = flat_grad.dot(d)
        if gtd > -o.tolerance_change:  # not a descent direction (any more)
            break

        if o.line_search_fn == "strong_wolfe":
            start, direction = leaves, d
            loss, flat_grad, t, ls_func_evals = strong_wolfe(
                lambda step: evaluate(layout.moved(start, step, direction)), d, t, loss, flat_grad,
                gtd, max_linesearch_steps=o.max_eval - current_evals)
            leaves = layout.moved(start, t, d)
            opt_cond = flat_grad.abs().max() <= o.tolerance_grad
        else:
            leaves = layout.moved(leaves, t, d)
            ls_func_evals = 0
            if n_iter != o.max_iter:  # torch skips the evaluation after the last iteration
                loss, flat_grad = evaluate(leaves)
                opt_cond = flat_grad.abs().max() <= o.tolerance_grad
                ls_func_evals = 1
        current_evals += ls_func_evals
        func_evals += ls_func_evals

        # stopping conditions
        if n_iter == o.max_iter or current_evals >= o.max_eval or opt_cond:
            break
        if d.mul(t).abs().max() <= o.tolerance_change:  # lack of progress
            break
        if abs(loss - prev_loss) < o.tolerance_change:
            break

    if not isinstance(H_diag, torch.Tensor):
        H_diag = torch.full((), H_diag, dtype=state.H_diag.dtype, device=state.H_diag.device)
    new_state = LBFGSState(
        func_evals=_count(func_evals, state.func_evals, donate),
        n_iter=_count(lifetime_iter, state.n_iter, donate),
        d=_keep(d, state.d, donate),
        t=_keep(torch.tensor(float(t), dtype=state.t.dtype, device=state.t.device), state.t, donate),
        old_dirs=history.dirs, old_stps=history.stps, ro=history.ro,
        history_len=_count(history.len, state.history_len, donate),
        history_start=_count(history.start, state.history_start, donate),
        H_diag=_keep(H_diag, state.H_diag, donate),
        prev_flat_grad=_keep(prev_flat_grad, state.prev_flat_grad, donate),
        prev_loss=_keep(torch.tensor(prev_loss, dtype=state.prev_loss.dtype,
                                     device=state.prev_loss.device), state.prev_loss, donate))
    return leaves, new_state
