"""PSGD Kron: momentum preconditioned by a Kronecker-factored ``Q^H Q`` fitted on the fly.

The whole step of timm's ``Kron`` as one transform: its random draws (when to balance
the factors, the probe vectors, the stochastic weight decay) come from generators whose
states are part of the transform's state, so ``update`` is a function of its inputs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, NamedTuple

import optree
import torch

from .. import kernels as k
from ..base import GradientTransformation, Needs, declare
from ..hyperparams import check_range, concrete
from ..tree import select
from .kron_preconditioner import (KronExpressions, balance, diagonal_dims, init_factors, kron_expressions,
                                  precondition, update_factors)

__all__ = ["ScaleByKronState", "precond_update_prob_schedule", "scale_by_kron", "python_rng_words",
           "python_rng_state"]

_MT_WORDS = 625  # Mersenne Twister: 624 words and the position


class ScaleByKronState(NamedTuple):
    """State of :func:`scale_by_kron` (timm's per-param keys in brackets).

    ``q`` holds one tree per dim index ``d``: leaf ``i`` is param ``i``'s factor of dim
    ``d`` (a ``(n, n)`` upper-triangular matrix or a ``(n,)`` diagonal, in the
    preconditioner dtype), None where the param has fewer dims.
    """

    count: Any  # tree of 0-d int32: steps each leaf has taken [step]
    update_counter: Any  # tree of 0-d int32: steps since the leaf's last preconditioner update [update_counter]
    mu: Any  # tree like the (flattened) params, mu_dtype: the momentum [momentum_buffer]
    q: tuple  # per dim: tree of factors [Q, a list per param]
    rng: torch.Tensor  # (625,) int64: Python's Mersenne Twister state (balance, seeds, weight decay) [rng_state]
    torch_rng: torch.Tensor | None  # uint8 torch generator state of the probes; None when deterministic


def precond_update_prob_schedule(n: Any, max_prob: float = 1.0, min_prob: float = 0.03, decay: float = 0.001,
                                 flat_start: float = 500) -> torch.Tensor:
    r"""The probability of a preconditioner update at step ``n`` (a float32 0-d tensor):
    :math:`\mathrm{clamp}(p_{\max} e^{-d (n - n_0)}, p_{\min}, p_{\max})`, flat at
    :math:`p_{\max}` for ``flat_start`` steps, then annealed to ``min_prob`` (about step
    4000 with the defaults). Computed in float32, as timm's.

    Args:
      n: the step count (0 at a param's first step).
      max_prob: :math:`p_{\max}`. Default 1.
      min_prob: :math:`p_{\min}`. Default 0.03.
      decay: :math:`d`. Default 0.001.
      flat_start: :math:`n_0`. Default 500.

    Example:
      >>> from functional_optim.transforms.kron import precond_update_prob_schedule
      >>> precond_update_prob_schedule(0), precond_update_prob_schedule(1500)
      (tensor(1.), tensor(0.3679))
    """
    t = torch.tensor(n, dtype=torch.float32)
    prob = max_prob * torch.exp(-decay * (t - flat_start))
    return prob.clamp(min=min_prob, max=max_prob)


def python_rng_words(seed_or_state: int | tuple) -> torch.Tensor:
    """The state of ``random.Random(seed)`` (or a ``random.Random.getstate()`` tuple, such
    as timm's ``rng_state``) as a ``(625,)`` int64 tensor (the form kept in
    :class:`ScaleByKronState`).

    Example:
      >>> import random
      >>> from functional_optim.transforms.kron import python_rng_words
      >>> python_rng_words(1337).shape, bool((python_rng_words(random.Random(5).getstate())
      ...                                     == python_rng_words(5)).all())
      (torch.Size([625]), True)
    """
    if isinstance(seed_or_state, int) and not isinstance(seed_or_state, bool):
        return _words(random.Random(seed_or_state).getstate())
    if not isinstance(seed_or_state, (tuple, list)) or len(seed_or_state) != 3:
        raise TypeError("rng state must be a seed (int) or a random.Random.getstate() tuple")
    return _words(tuple(seed_or_state))


def python_rng_state(words: torch.Tensor) -> tuple:
    """The ``random.Random.getstate()`` tuple held in ``words`` (timm's ``rng_state``).

    Example:
      >>> import random
      >>> from functional_optim.transforms.kron import python_rng_state, python_rng_words
      >>> python_rng_state(python_rng_words(7)) == random.Random(7).getstate()
      True
    """
    return (3, tuple(int(w) for w in words.tolist()), None)


def _words(state: tuple) -> torch.Tensor:
    version, internal, gauss = state
    if version != 3 or len(tuple(internal)) != _MT_WORDS or gauss is not None:
        raise ValueError("rng state must be a random.Random state (version 3, 625 words, no pending gauss)")
    return torch.tensor(internal, dtype=torch.int64)


def _flat_shape(shape: tuple[int, ...], flatten: bool, start: int, end: int) -> tuple[int, ...]:
    # timm's safe_flatten: dims start..end merged when that range is non-empty
    if not flatten:
        return shape
    ndim = len(shape)
    end = min(end if end >= 0 else ndim + end, ndim - 1)
    if ndim <= start or start > end:
        return shape
    merged = 1
    for s in shape[start:end + 1]:
        merged *= s
    return shape[:start] + (merged,) + shape[end + 1:]


def _is_zero(value: Any) -> bool:
    return not isinstance(value, torch.Tensor) and value == 0


def _axpy(x: torch.Tensor, y: torch.Tensor, alpha: Any) -> torch.Tensor:
    """``x + alpha * y`` rounded as timm's ``x.add_(y, alpha=alpha)`` (``x + y * alpha``
    for a tensor alpha, timm's ``_add_scaled_``)."""
    if isinstance(alpha, torch.Tensor):
        return x + y * alpha
    return torch.add(x, y, alpha=alpha)


def scale_by_kron(learning_rate: float | torch.Tensor = 1e-3, momentum: float | torch.Tensor = 0.9,
                  weight_decay: float | torch.Tensor = 0.0,
                  preconditioner_update_probability: float | Callable[[int], Any] | None = None,
                  max_size_triangular: int = 2048, min_ndim_triangular: int = 2,
                  memory_save_mode: str | None = None, momentum_into_precond_update: bool = True,
                  precond_lr: float | torch.Tensor = 0.1, precond_init_scale: float = 1.0,
                  mu_dtype: torch.dtype | None = None, precond_dtype: torch.dtype | None = None,
                  decoupled_decay: bool = False, max_learning_rate: float | torch.Tensor | None = None,
                  flatten: bool = False, flatten_start_dim: int = 2, flatten_end_dim: int = -1,
                  stochastic_weight_decay: bool = False, deterministic: bool = False,
                  rng_seed: int = 1337) -> GradientTransformation:
    r"""PSGD with a Kronecker-factored preconditioner (timm's ``Kron``) as an update ``p_new - p``.

    The learning rate and weight decay are part of the transform (the stochastic decay
    draws from the same generator as the preconditioner), so its output is the whole step.
    Per present leaf in tree order, with its step :math:`t` (from 1), gradient :math:`g`
    (flattened over dims ``flatten_start_dim..flatten_end_dim`` with ``flatten``):

    .. math::

        \pi &= \text{the update probability at } t - 1 \text{ (a number, a callable of } t-1,
              \text{ or } \texttt{precond\_update\_prob\_schedule)} \\
        c &\leftarrow c + 1, \quad \text{update} = [c \ge 1/\pi], \quad c \leftarrow 0 \text{ if update} \\
        m &\leftarrow \beta m + (1 - \beta) g, \qquad \hat m = m / (1 - \beta^t)
              \text{ (in the preconditioner dtype)} \\
        &\text{if } r_1 < 0.01 \text{ and update and } g \text{ has 2+ dims: } Q_i \leftarrow
              \texttt{balance}(Q)_i \\
        &\text{if update: } v \sim \mathcal N(0, I),\ Q \leftarrow
              \texttt{update\_factors}(Q, \hat m \text{ (or } g), v, \mu_Q) \\
        d &= Q^H Q\, \hat m, \qquad d \leftarrow d \cdot \min(1, 1.1 / (\mathrm{RMS}(d) + 10^{-8})) \\
        \lambda' &= 2 r_2 \lambda \text{ (stochastic) else } \lambda, \qquad
              d \leftarrow d + \lambda' p \text{ (coupled) or } p \leftarrow p (1 - s \lambda')
              \text{ (decoupled, } s = \eta \text{ or } \eta^2/\eta_{\max}) \\
        p_{new} &= p - \eta d

    :math:`r_1, r_2` are draws of one Python ``random.Random(rng_seed)`` shared by all
    leaves (plus ``randint(0, 2**31)`` seeding each probe when ``deterministic``); its
    state is ``state.rng``. The probes otherwise come from a torch generator whose state
    is ``state.torch_rng`` (``torch.Generator().manual_seed(rng_seed)`` at init; the
    ``adapters.timm.Kron`` class binds it to torch's global generator, as timm draws).
    The triangular solves run in float32 whatever the dtypes (timm's choice).

    Reads step counters and draws on the host and branches on them (as timm): not for
    ``vmap`` or ``torch.compile``. Complex params are not supported.

    Args:
      learning_rate: :math:`\eta` >= 0. Default 1e-3.
      momentum: :math:`\beta` in [0, 1). Default 0.9.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      preconditioner_update_probability: a probability in (0, 1], a callable of the step
        count returning one, or None (default): :func:`precond_update_prob_schedule`.
      max_size_triangular: dims larger than this get a diagonal factor. Default 2048.
      min_ndim_triangular: tensors with fewer dims get diagonal factors only. Default 2.
      memory_save_mode: None (default), ``"one_diag"``, ``"smart_one_diag"`` or ``"all_diag"``
        (see :func:`~functional_optim.transforms.kron_preconditioner.diagonal_dims`).
      momentum_into_precond_update: fit the preconditioner on :math:`\hat m` (default
        True) rather than on :math:`g`.
      precond_lr: :math:`\mu_Q` > 0, the factors' step size. Default 0.1.
      precond_init_scale: :math:`Q = s I` at init. Default 1.
      mu_dtype: dtype of the momentum (None, default: the param's).
      precond_dtype: dtype of the factors and of :math:`\hat m` (None, default: the param's).
      decoupled_decay: decay the params instead of adding :math:`\lambda p`. Default False.
      max_learning_rate: :math:`\eta_{\max}` > 0 of timm's corrected decoupled decay; None
        (default): :math:`s = \eta`.
      flatten: precondition params flattened over ``flatten_start_dim..flatten_end_dim``
        (defaults 2 and -1). Default False.
      stochastic_weight_decay: :math:`\lambda' = 2 r_2 \lambda`. Default False.
      deterministic: seed each probe from the Python generator (reproducible across a
        checkpoint). Default False.
      rng_seed: seed of the Python generator (and of the torch one). Default 1337.

    References:
      Li, *Preconditioned Stochastic Gradient Descent*, 2015, arXiv:1512.04202.
      Li, *Preconditioner on Matrix Lie Group for SGD*, 2018, arXiv:1809.10232.

    Example:
      >>> import torch
      >>> from functional_optim.transforms import scale_by_kron
      >>> tx = scale_by_kron(learning_rate=0.1)
      >>> params = {"w": torch.ones(2, 2)}
      >>> u, state = tx.update({"w": torch.ones(2, 2)}, tx.init(params), params)
      >>> [tuple(q.shape) for q in (state.q[0]["w"], state.q[1]["w"])], u["w"].shape
      ([(2, 2), (2, 2)], torch.Size([2, 2]))
    """
    check_range("learning_rate", learning_rate, 0.0)
    check_range("momentum", momentum, 0.0, 1.0)
    check_range("weight_decay", weight_decay, 0.0)
    check_range("precond_lr", precond_lr, 0.0)
    if max_learning_rate is not None:
        check_range("max_learning_rate", max_learning_rate, 0.0)
        if concrete(max_learning_rate) == 0.0:
            raise ValueError("max_learning_rate must be > 0")
    prob_arg = preconditioner_update_probability
    if prob_arg is not None and not callable(prob_arg):
        v = concrete(prob_arg)
        if v is not None and not 0 < v <= 1:
            raise ValueError(f"preconditioner_update_probability must be in (0, 1], got {prob_arg}")
    for name, value in (("max_size_triangular", max_size_triangular), ("min_ndim_triangular", min_ndim_triangular),
                        ("flatten_start_dim", flatten_start_dim), ("flatten_end_dim", flatten_end_dim),
                        ("rng_seed", rng_seed)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    for name, value in (("momentum_into_precond_update", momentum_into_precond_update),
                        ("decoupled_decay", decoupled_decay), ("flatten", flatten),
                        ("stochastic_weight_decay", stochastic_weight_decay), ("deterministic", deterministic)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    for name, value in (("mu_dtype", mu_dtype), ("precond_dtype", precond_dtype)):
        if value is not None and not (isinstance(value, torch.dtype) and value.is_floating_point):
            raise TypeError(f"{name} must be None or a floating torch.dtype, got {value!r}")
    diagonal_dims((), max_size_triangular, min_ndim_triangular, memory_save_mode)  # checks the mode
    decay = not _is_zero(weight_decay)

    def layout(p: torch.Tensor) -> tuple[tuple[int, ...], KronExpressions]:
        shape = _flat_shape(tuple(p.shape), flatten, flatten_start_dim, flatten_end_dim)
        expr = kron_expressions(diagonal_dims(shape, max_size_triangular, min_ndim_triangular, memory_save_mode))
        return shape, expr

    def init_fn(params):
        leaves, spec = optree.tree_flatten(params, none_is_leaf=True)
        present = [p for p in leaves if p is not None]
        factors = []
        for p in leaves:
            if p is None:
                factors.append([])
                continue
            shape, expr = layout(p)
            factors.append(init_factors(shape, expr.diagonal, precond_init_scale, precond_dtype or p.dtype, p.device))
        ndims = max((len(f) for f in factors), default=0)
        q = tuple(optree.tree_unflatten(spec, [f[d] if d < len(f) else None for f in factors])
                  for d in range(ndims))

        def per_leaf(make):
            return optree.tree_unflatten(spec, [None if p is None else make(p) for p in leaves])

        device = present[0].device if present else torch.device("cpu")
        torch_rng = None
        if not deterministic:
            gen = torch.Generator(device=device)
            gen.manual_seed(rng_seed)
            torch_rng = gen.get_state()
        zero = lambda p: torch.zeros((), dtype=torch.int32, device=p.device)  # noqa: E731
        return ScaleByKronState(
            count=per_leaf(zero), update_counter=per_leaf(zero),
            mu=per_leaf(lambda p: torch.zeros(layout(p)[0], dtype=mu_dtype or p.dtype, device=p.device)),
            q=q, rng=python_rng_words(rng_seed), torch_rng=torch_rng)

    def update_fn(updates, state, params=None, **extra):
        del extra
        if params is None:
            raise ValueError("scale_by_kron needs params (update(updates, state, params))")
        trees = dict(count=state.count, counter=state.update_counter, mu=state.mu, params=params)
        trees.update({f"q{d}": tree for d, tree in enumerate(state.q)})
        sel = select(updates, **trees)
        if not len(sel):
            return updates, state
        rng = random.Random()
        rng.setstate(python_rng_state(state.rng))
        gen = None
        if state.torch_rng is not None:
            gen = torch.Generator(device=sel.updates[0].device)
            gen.set_state(state.torch_rng)
        out = _Columns(len(state.q))
        for j, (g, p) in enumerate(zip(sel.updates, sel["params"])):
            factors = [sel[f"q{d}"][j] for d in range(len(state.q)) if sel[f"q{d}"][j] is not None]
            step = _leaf_step(g, p, int(sel["count"][j]), int(sel["counter"][j]), sel["mu"][j], factors, rng, gen)
            out.add(*step)
        new_state = ScaleByKronState(
            count=sel.rebuild(out.count, "count"), update_counter=sel.rebuild(out.counter, "counter"),
            mu=sel.rebuild(out.mu, "mu"),
            q=tuple(sel.rebuild(col, f"q{d}") for d, col in enumerate(out.q)),
            rng=_words(rng.getstate()), torch_rng=None if gen is None else gen.get_state())
        return sel.rebuild(out.updates), new_state

    def due(count: int, counter: int) -> tuple[bool, int]:
        """Whether this step updates the preconditioner, and the new update counter."""
        prob = precond_update_prob_schedule if prob_arg is None else prob_arg
        if callable(prob):
            prob = prob(count)
        counter += 1
        do_update = bool(counter >= 1 / prob)  # timm's comparison (a float32 tensor for the schedule)
        return do_update, 0 if do_update else counter

    def fit(factors, expr, debiased, grad, rng, gen):
        """The factors after one fitting step on a Gaussian probe."""
        probe_gen = gen
        if deterministic:  # a fresh generator seeded by the Python one
            probe_gen = torch.Generator(device=debiased.device)
            probe_gen.manual_seed(rng.randint(0, 2 ** 31))
        v = torch.randn(debiased.shape, generator=probe_gen, dtype=debiased.dtype, device=debiased.device)
        fit_on = debiased if momentum_into_precond_update else grad.to(debiased.dtype)
        return update_factors(factors, expr, fit_on, v, precond_lr)

    def decayed_step(d, p, rng):
        """``p_new`` from the direction ``d`` with the weight decay (its draw if stochastic)."""
        new_p = p
        if decay:
            wd = 2 * rng.random() * weight_decay if stochastic_weight_decay else weight_decay
            if decoupled_decay:
                scale = learning_rate if max_learning_rate is None else learning_rate ** 2 / max_learning_rate
                new_p = p * (1.0 - scale * wd)
            else:
                d = _axpy(d, p, wd)
        return _axpy(new_p, d, -learning_rate).to(p.dtype)  # 0-d tensor hyperparameters must not promote

    def _leaf_step(g, p, count, counter, mu, factors, rng, gen):
        if g.is_complex():
            raise TypeError("scale_by_kron does not support complex params (timm's float32 solves are real)")
        shape, expr = layout(p)
        grad = g.reshape(shape) if flatten else g
        do_update, counter = due(count, counter)
        count += 1
        mu = k.add(k.mul([mu], momentum), [grad], 1 - momentum)[0].to(mu.dtype)
        debiased = (mu / (1 - momentum ** count)).to(precond_dtype or grad.dtype)
        # one draw per leaf and step whether or not it is used (timm's sequence)
        if rng.random() < 0.01 and do_update and grad.dim() > 1:
            factors = balance(factors)
        if do_update:
            factors = fit(factors, expr, debiased, grad, rng, gen)
        d = precondition(factors, expr, debiased).to(p.dtype)
        # the RMS's root has derivative 0 at 0 (a leaf whose gradients were all 0: d = 0)
        d = d * torch.clamp(1.1 / (k.sqrt([d.square().mean()])[0] + 1e-8), max=1.0)
        new_p = decayed_step(d.reshape(p.shape) if flatten else d, p, rng)
        counts = (torch.tensor(count, dtype=torch.int32, device=p.device),
                  torch.tensor(counter, dtype=torch.int32, device=p.device))
        return new_p - p, counts, mu, factors

    return declare(GradientTransformation(init_fn, update_fn), Needs.MATRIX)


class _Columns:
    """The per-leaf results of one update, gathered into lists (one per state field)."""

    def __init__(self, ndims: int):
        self.updates: list = []
        self.count: list = []
        self.counter: list = []
        self.mu: list = []
        self.q: list[list] = [[] for _ in range(ndims)]

    def add(self, u, counts, mu, factors) -> None:
        self.updates.append(u)
        self.count.append(counts[0])
        self.counter.append(counts[1])
        self.mu.append(mu)
        for d in range(len(self.q)):
            self.q[d].append(factors[d] if d < len(factors) else None)
