"""The pieces of NVIDIA's LAMB and LARS/LARC as timm computes them: global-norm clipping by
division, LAMB's moments with a per-group step, and the two layer-wise trust ratios."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare, init_empty_state, mark_elementwise
from ..hyperparams import check_number, check_range, concrete, materialize
from ..tree import select, zeros_like
from .clipping import _real_dtype


class ScaleByLambMomentsState(NamedTuple):
    """State of :func:`scale_by_lamb_moments`."""

    count: torch.Tensor  # 0-d int32: updates applied so far (timm's per-group ``step``)
    leaf_count: Any  # tree of 0-d int32: updates each leaf has received (0: timm has no state for it yet)
    mu: Any  # tree like params: first moment (timm's exp_avg)
    nu: Any  # tree like params: second moment (timm's exp_avg_sq)


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def divide_by_global_norm(max_norm: float | torch.Tensor | None) -> GradientTransformation:
    r"""Divide all updates by :math:`\max(1, G / c)`, :math:`G` their global 2-norm.

    .. math::

        G &= \lVert (\lVert g_1 \rVert_2, \dots, \lVert g_n \rVert_2) \rVert_2 \\
        d &= \max(1, G / c) \\
        g_i &\leftarrow g_i / d

    the clipping of NVIDIA's and timm's ``Lamb`` (``max_grad_norm``), as they round it:
    the same result as :func:`~functional_optim.clip_by_global_norm` up to the last bit
    (that one multiplies by :math:`c / \max(G, c)`). Norms accumulate in float32 at least.

    The divisor can come from outside: ``update(..., clip_divisor=d)`` (a 0-d tensor)
    divides by ``d`` instead of computing it, e.g. a divisor computed over the gradients of
    every param group of an optimizer, as timm's ``Lamb`` does (``adapters.timm.Lamb``).

    Args:
      max_norm: :math:`c` > 0, a number or 0-d tensor; None: divide only by a given
        ``clip_divisor`` (the identity without one), for a caller that computes it.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.divide_by_global_norm(1.0)
      >>> u, _ = tx.update({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}, tx.init(None))
      >>> u["a"], u["b"]  # G = 5: divided by 5
      (tensor([0.6000]), tensor([0.8000]))
    """
    if max_norm is not None:
        check_range("max_norm", max_norm, 0.0)
        if concrete(max_norm) == 0.0:
            raise ValueError("Invalid max_norm: 0.0 (expected max_norm > 0)")

    def update_fn(updates, state, params=None, *, donate=False, clip_divisor=None, **extra):
        del params, extra
        sel = select(updates)
        if not len(sel) or (clip_divisor is None and max_norm is None):
            return updates, state
        if clip_divisor is None:
            norm = k.global_norm(sel.updates, k.norm_dtype(sel.updates))
            clip_divisor = torch.clamp(norm / max_norm, min=1.0)
        divisor = materialize(clip_divisor)  # once per step when compiled
        divisors = [divisor.to(_real_dtype(u)) for u in sel.updates]
        return sel.rebuild(k.div(sel.updates, divisors, donate=donate)), state

    return declare(GradientTransformation(init_empty_state, update_fn), Needs.GLOBAL)


def scale_by_lamb_moments(b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.999,
                          eps: float | torch.Tensor = 1e-6, bias_correction: bool = True,
                          grad_averaging: bool = True) -> GradientTransformation:
    r"""LAMB's Adam direction with timm's ``Lamb`` numerics and options.

    With :math:`t` the number of updates so far (one counter for the whole tree, timm's
    per-group ``step``):

    .. math::

        m &\leftarrow \beta_1 m + \beta_3 g, \qquad \beta_3 = 1 - \beta_1 \text{ with grad\_averaging, else } 1 \\
        v &\leftarrow \beta_2 v + (1 - \beta_2)\, g^2 \\
        b_1 &= 1 - \beta_1^t, \quad b_2 = 1 - \beta_2^t \quad (\text{both } 1 \text{ without bias\_correction}) \\
        u &= (m / b_1) / (\sqrt{v} / \sqrt{b_2} + \epsilon)

    (:math:`m` by ``lerp`` when :math:`\beta_3 = 1 - \beta_1`, as timm). Unlike
    :func:`~functional_optim.scale_by_adam` the bias corrections use the tree's common step
    count, so a leaf that had no gradient for a while (None) is corrected with the step of
    the others when it comes back, as timm does within a param group. Each leaf also counts
    its own updates (``leaf_count``: timm creates a param's state at its first gradient).

    Args:
      b1: :math:`\beta_1` in [0, 1). Default 0.9.
      b2: :math:`\beta_2` in [0, 1). Default 0.999.
      eps: :math:`\epsilon` >= 0, added outside the root. Default 1e-6.
      bias_correction: divide by :math:`1 - \beta_i^t`. Default True.
      grad_averaging: weight the gradient by :math:`1 - \beta_1` in :math:`m`. Default True.

    References:
      You et al., *Large Batch Optimization for Deep Learning: Training BERT in 76 minutes*,
      2020, arXiv:1904.00962.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_lamb_moments()
      >>> u, state = tx.update({"w": torch.tensor([3.0, -0.5])}, tx.init({"w": torch.zeros(2)}))
      >>> u["w"], state.count  # the first step is about sign(g)
      (tensor([ 1.0000, -1.0000]), tensor(1, dtype=torch.int32))
    """
    check_range("b1", b1, 0.0, 1.0)
    check_range("b2", b2, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    _check_flag("bias_correction", bias_correction)
    _check_flag("grad_averaging", grad_averaging)

    def init_fn(params):
        return ScaleByLambMomentsState(count=steps.zero_count(steps.first_device(params)),
                                       leaf_count=steps.leaf_counts(params), mu=zeros_like(params),
                                       nu=zeros_like(params))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates, leaf_count=state.leaf_count, mu=state.mu, nu=state.nu)
        count = state.count + 1
        g = sel.updates
        if not g:
            return updates, state._replace(count=count)
        if grad_averaging:
            mu = k.lerp(sel["mu"], g, 1 - b1, donate=donate)
        else:
            mu = k.add(k.mul(sel["mu"], b1, donate=donate), g, donate=True)  # ours: donated or fresh
        nu = k.mul(sel["nu"], b2, donate=donate)
        nu = k.addcmul(nu, g, g, 1 - b2, donate=True)
        denom = k.sqrt(nu)
        if bias_correction:
            # per-step scalars once, in float64 (timm's Python doubles): 1 - b1**t, sqrt(1 - b2**t)
            bc1, root_bc2 = steps.per_leaf(lambda t: (1 - b1 ** t, (1 - b2 ** t).sqrt()), [count], g[:1])
            bc1, root_bc2 = bc1[0], root_bc2[0]
            denom = k.div(denom, root_bc2, donate=donate)  # in place only when donating: sqrt saved it
            denom = k.add(denom, eps, donate=donate)
            out = k.div(k.div(mu, bc1), denom, donate=donate)
        else:
            denom = k.add(denom, eps, donate=donate)
            out = k.div(mu, denom)
        new_state = ScaleByLambMomentsState(
            count=count, leaf_count=sel.rebuild(steps.increment(sel["leaf_count"], donate=donate), "leaf_count"),
            mu=sel.rebuild(mu, "mu"), nu=sel.rebuild(nu, "nu"))
        return sel.rebuild(out), new_state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))


def _gate(ratio: torch.Tensor, gate: Any) -> torch.Tensor:
    # the ratio where the gate (a weight decay) is nonzero, else 1
    if gate is None:
        return ratio
    return torch.where(torch.as_tensor(gate, device=ratio.device) != 0, ratio, torch.ones_like(ratio))


def _check_gate(gate: Any) -> None:
    if gate is not None:
        check_number("gate", gate)


def scale_by_lamb_trust_ratio(trust_clip: bool = False, *,
                              param_decay: float | torch.Tensor | Callable[[], Any] | None = None,
                              gate: float | torch.Tensor | None = None) -> GradientTransformation:
    r"""Scale each leaf's update by LAMB's trust ratio, as timm's ``Lamb`` computes it.

    Per leaf, with :math:`w = \lVert p' \rVert_2`, :math:`p' = (1 - r) p` the param after
    a decoupled decay of rate :math:`r` (``param_decay``; :math:`p' = p` without), and
    :math:`n = \lVert u \rVert_2`:

    .. math::

        \tau &= w / n \text{ if } w > 0 \text{ and } n > 0, \text{ else } 1 \\
        \tau &\leftarrow \min(\tau, 1) \quad \text{with trust\_clip (LAMBC)} \\
        u &\leftarrow \tau\, u

    (:math:`\lVert p' \rVert` is taken as :math:`|1 - r|\,\lVert p \rVert`.) With ``gate``
    (timm applies the ratio only to params whose weight decay is nonzero, unless
    ``always_adapt``), :math:`\tau = 1` where the gate's value is 0. Norms accumulate in
    float32 at least. Needs ``params``; declares ``Needs.PER_PARAM`` (segmented norms on
    the adapter's flat buffers).

    Args:
      trust_clip: clip the ratio at 1 (timm's LAMBC). Default False.
      param_decay: :math:`r`, the decoupled decay rate applied to the params before the
        ratio is taken (timm decays first): a number, a 0-d tensor, or a function of no
        arguments returning one, called at every update (for a rate made of tensors that
        change in place, such as an adapter's lr); None (default): none.
      gate: a number or 0-d tensor; the ratio applies only where it is nonzero. None
        (default): always.

    References:
      You et al., *Large Batch Optimization for Deep Learning: Training BERT in 76 minutes*,
      2020, arXiv:1904.00962. Fong et al., LAMBC (trust-ratio clipping), 2020.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_lamb_trust_ratio(trust_clip=True)
      >>> params = {"w": torch.tensor([3.0, 4.0]), "v": torch.tensor([0.3, 0.4])}
      >>> u, _ = tx.update({"w": torch.tensor([1.0, 0.0]), "v": torch.tensor([1.0, 0.0])}, tx.init(params), params)
      >>> u["w"], u["v"]  # ratios 5 (clipped to 1) and 0.5
      (tensor([1., 0.]), tensor([0.5000, 0.0000]))
    """
    _check_flag("trust_clip", trust_clip)
    if param_decay is not None and not callable(param_decay):
        check_number("param_decay", param_decay)
    _check_gate(gate)

    def ratio(w, n):
        if param_decay is not None:
            # read at every update: a rate made of tensors changed in place (lr) stays current
            r = param_decay() if callable(param_decay) else param_decay
            w = w * torch.abs(1 - torch.as_tensor(r, dtype=w.dtype, device=w.device))
        ok = (w > 0) & (n > 0)
        one = torch.ones_like(w)
        tau = torch.where(ok, w / torch.where(ok, n, one), one)  # no 0/0 even where not taken
        if trust_clip:
            tau = torch.clamp(tau, max=1.0)
        return _gate(tau, gate)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        sel, ratios = _trust_ratios("scale_by_lamb_trust_ratio", ratio, updates, params)
        if sel is None:
            return updates, state
        return sel.rebuild(k.mul(sel.updates, ratios, donate=donate)), state

    return declare(GradientTransformation(init_empty_state, update_fn), Needs.PER_PARAM)


def scale_by_lars_trust_ratio(trust_coeff: float | torch.Tensor = 1e-3, eps: float | torch.Tensor = 1e-8,
                              weight_decay: float | torch.Tensor = 0.0, trust_clip: bool = False,
                              lr: float | torch.Tensor | None = None, *,
                              gate: float | torch.Tensor | None = None) -> GradientTransformation:
    r"""LARS's layer-wise rate with weight decay, and LARC's clipping, as timm's ``Lars``.

    Per leaf, with :math:`w = \lVert p \rVert_2` and :math:`n = \lVert g \rVert_2` (the
    incoming update, before the weight decay is added):

    .. math::

        \tau &= \frac{\kappa\, w}{n + \lambda w + \epsilon} \text{ if } w > 0 \text{ and } n > 0,
              \text{ else } 1 \\
        \tau &\leftarrow \min(\tau / \eta, 1) \quad \text{with trust\_clip (LARC)} \\
        g &\leftarrow (g + \lambda p)\, \tau

    (NVIDIA apex's LARC and timm's ``Lars``; momentum and the learning rate follow as
    separate transforms.) With ``gate``, :math:`\tau = 1` where the gate's value is 0.
    Norms accumulate in float32 at least. Needs ``params``; declares ``Needs.PER_PARAM``.

    Args:
      trust_coeff: :math:`\kappa` >= 0. Default 1e-3.
      eps: :math:`\epsilon` >= 0 in the denominator. Default 1e-8.
      weight_decay: :math:`\lambda` >= 0, added to the update and to the denominator. Default 0.
      trust_clip: LARC: clip :math:`\tau/\eta` at 1, so the effective rate
        :math:`\eta\tau` never exceeds :math:`\eta`. Default False.
      lr: :math:`\eta` > 0, needed with ``trust_clip`` (a number or 0-d tensor).
      gate: a number or 0-d tensor; the ratio applies only where it is nonzero. None
        (default): always.

    References:
      You, Gitman & Ginsburg, *Large Batch Training of Convolutional Networks*, 2017,
      arXiv:1708.03888.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_lars_trust_ratio(trust_coeff=0.1, eps=0.0)
      >>> params = {"w": torch.tensor([3.0, 4.0])}
      >>> tx.update({"w": torch.tensor([2.0, 0.0])}, tx.init(params), params)[0]["w"]  # 0.1 * 5 / 2
      tensor([0.5000, 0.0000])
    """
    check_range("trust_coeff", trust_coeff, 0.0)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0)
    _check_flag("trust_clip", trust_clip)
    if trust_clip:
        if lr is None:
            raise ValueError("trust_clip=True (LARC) needs lr, the learning rate the ratio is clipped against")
        check_range("lr", lr, 0.0)
    _check_gate(gate)

    def ratio(w, n):
        ok = (w > 0) & (n > 0)
        one = torch.ones_like(w)
        denom = torch.where(ok, n + w * weight_decay + eps, one)  # never 0 where not taken
        tau = torch.where(ok, trust_coeff * w / denom, one)
        if trust_clip:
            tau = torch.clamp(tau / lr, max=1.0)
        return _gate(tau, gate)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        sel, ratios = _trust_ratios("scale_by_lars_trust_ratio", ratio, updates, params)
        if sel is None:
            return updates, state
        decayed = k.add(sel.updates, sel["params"], weight_decay, donate=donate)
        return sel.rebuild(k.mul(decayed, ratios, donate=True)), state

    return declare(GradientTransformation(init_empty_state, update_fn), Needs.PER_PARAM)


def _trust_ratios(name: str, ratio: Any, updates: Any, params: Any) -> tuple[Any, list[torch.Tensor]]:
    """The selection of ``updates`` with ``params`` and ``ratio(||p||, ||u||)`` per param
    (segmented on flat buffers), in each update's real dtype; ``(None, [])`` without updates."""
    if params is None:
        raise ValueError(f"{name} needs params: call update(updates, state, params)")
    sel = select(updates, params=params)
    us, ps = sel.updates, sel["params"]
    if not us:
        return None, []
    dtype = k.norm_dtype(us + ps)
    ratios = k.leafwise(ratio, k.norms(ps, dtype), k.norms(us, dtype))
    return sel, [r.to(_real_dtype(u)) for r, u in zip(ratios, us)]
