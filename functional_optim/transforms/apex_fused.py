"""The update rules of NVIDIA apex's fused optimizers (``FusedAdam``, ``FusedLAMB``'s first
stage, ``FusedNovoGrad``) in the order apex's CUDA kernels compute them, with one step
counter per tree (apex keeps ``step`` in the param group)."""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare, mark_elementwise
from ..hyperparams import check_range
from ..tree import select, zeros_like


class ScaleByApexMomentsState(NamedTuple):
    """State of :func:`scale_by_apex_moments`."""

    count: torch.Tensor  # 0-d int32: updates applied so far (apex's per-group ``step``)
    leaf_count: Any  # tree of 0-d int32: updates each leaf has received (0: apex has no state for it yet)
    mu: Any  # tree like params: first moment (apex's exp_avg)
    nu: Any  # tree like params: second moment (apex's exp_avg_sq)


class ScaleByApexNovogradState(NamedTuple):
    """State of :func:`scale_by_apex_novograd`."""

    count: torch.Tensor  # 0-d int32: updates applied so far (apex's per-group ``step``)
    leaf_count: Any  # tree of 0-d int32: updates each leaf has received
    mu: Any  # tree like params: first moment (apex's exp_avg)
    nu: Any  # tree of per-param scalars (real dtype, >= float32): the blended gradient norm (apex's exp_avg_sq)


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _is_zero(value: Any) -> bool:
    return not isinstance(value, torch.Tensor) and value == 0


def _needs_params(name: str, params: Any) -> None:
    if params is None:
        raise ValueError(f"{name} with a nonzero weight_decay needs params: call update(updates, state, params)")


def scale_by_apex_moments(b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.999,
                          eps: float | torch.Tensor = 1e-8, bias_correction: bool = True,
                          weight_decay: float | torch.Tensor = 0.0, adam_w_mode: bool = True,
                          grad_averaging: bool = True) -> GradientTransformation:
    r"""Adam's direction as apex's ``FusedAdam`` kernel (and ``FusedLAMB``'s first stage)
    computes it, weight decay included.

    With :math:`t` the number of updates of the tree (apex's per-group ``step``) and
    :math:`\lambda` the weight decay, per element in this order:

    .. math::

        g &\leftarrow g + \lambda p \quad \text{(L2 mode: } \texttt{adam\_w\_mode=False}) \\
        m &\leftarrow \beta_1 m + \beta_3 g, \quad \beta_3 = 1 - \beta_1
            \text{ with grad\_averaging, else } 1 \\
        v &\leftarrow \beta_2 v + (1 - \beta_2)\, g\, g \\
        u &= (m / b_1) / (\sqrt{v / b_2} + \epsilon), \quad b_i = 1 - \beta_i^t
            \text{ (1 without bias\_correction)} \\
        u &\leftarrow u + \lambda p \quad \text{(decoupled mode: } \texttt{adam\_w\_mode=True})

    The learning rate follows as a separate transform (apex: :math:`p \leftarrow p - \eta u`).
    Note the root of the bias-corrected :math:`v` (torch's Adam divides
    :math:`\sqrt v` by :math:`\sqrt{b_2}`). Needs ``params`` when :math:`\lambda \ne 0`.

    Args:
      b1: :math:`\beta_1` in [0, 1). Default 0.9.
      b2: :math:`\beta_2` in [0, 1). Default 0.999.
      eps: :math:`\epsilon` >= 0, added outside the root. Default 1e-8.
      bias_correction: divide the moments by :math:`1 - \beta_i^t`. Default True.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      adam_w_mode: add :math:`\lambda p` to the update (AdamW) rather than to the
        gradient (L2). Default True.
      grad_averaging: :math:`\beta_3 = 1 - \beta_1` (apex's FusedAdam always; FusedLAMB's
        option). Default True.

    References:
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, 2014, arXiv:1412.6980.
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, 2017, arXiv:1711.05101.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_apex_moments()
      >>> u, state = tx.update({"w": torch.tensor([3.0, -0.5])}, tx.init({"w": torch.zeros(2)}))
      >>> u["w"], state.count  # the first step is about sign(g)
      (tensor([ 1.0000, -1.0000]), tensor(1, dtype=torch.int32))
    """
    check_range("b1", b1, 0.0, 1.0)
    check_range("b2", b2, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0)
    for name, flag in (("bias_correction", bias_correction), ("adam_w_mode", adam_w_mode),
                       ("grad_averaging", grad_averaging)):
        _flag(name, flag)
    decay = not _is_zero(weight_decay)
    b3 = 1 - b1 if grad_averaging else 1.0

    def init_fn(params):
        return ScaleByApexMomentsState(count=steps.zero_count(steps.first_device(params)),
                                       leaf_count=steps.leaf_counts(params), mu=zeros_like(params),
                                       nu=zeros_like(params))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        if decay:
            _needs_params("scale_by_apex_moments", params)
        trees = dict(leaf_count=state.leaf_count, mu=state.mu, nu=state.nu)
        sel = select(updates, **trees, params=params) if decay else select(updates, **trees)
        count = state.count + 1
        g = sel.updates
        if not g:
            return updates, state._replace(count=count)
        if decay and not adam_w_mode:  # L2: on the gradient, before the moments
            g = k.add(g, sel["params"], weight_decay, donate=donate)
        mu = k.add(k.mul(sel["mu"], b1, donate=donate), g, b3, donate=True)
        nu = k.addcmul(k.mul(sel["nu"], b2, donate=donate), g, g, 1 - b2, donate=True)
        if bias_correction:
            # per-step scalars once (Python doubles in apex's host code: 1 - b**t)
            bc1, bc2 = steps.per_leaf(lambda t: (1 - b1 ** t, 1 - b2 ** t), [count], g[:1])
            m_hat, v_hat = k.div(mu, bc1[0]), k.div(nu, bc2[0])
        else:
            m_hat, v_hat = mu, nu
        denom = k.add(k.sqrt(v_hat, donate=bias_correction), eps, donate=True)
        out = k.div(m_hat, denom, donate=bias_correction)
        if decay and adam_w_mode:  # decoupled: on the update
            out = k.add(out, sel["params"], weight_decay, donate=True)
        new_state = ScaleByApexMomentsState(
            count=count, leaf_count=sel.rebuild(steps.increment(sel["leaf_count"], donate=donate), "leaf_count"),
            mu=sel.rebuild(mu, "mu"), nu=sel.rebuild(nu, "nu"))
        return sel.rebuild(out), new_state

    return mark_elementwise(GradientTransformation(init_fn, update_fn))


def scale_by_apex_novograd(b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.999,
                           eps: float | torch.Tensor = 1e-8, bias_correction: bool = True,
                           weight_decay: float | torch.Tensor = 0.0, grad_averaging: bool = True,
                           reg_inside_moment: bool = False, norm_type: int = 2,
                           init_zero: bool = False) -> GradientTransformation:
    r"""NovoGrad as apex's ``FusedNovoGrad`` computes it: a bias-corrected moving average of
    each param's gradient *norm* (not of its square, as timm's ``NvNovoGrad`` and MONAI do).

    Per param, with :math:`t` the tree's step count, :math:`n = \lVert g \rVert_2` (or
    :math:`\max|g|` with ``norm_type=0``) and :math:`\beta_3 = 1 - \beta_1` with
    ``grad_averaging`` (else 1), in this order:

    .. math::

        \nu_0 &= n_1 \text{ at the first step (} 0 \text{ with init\_zero)} \\
        \nu_t &= \sqrt{\beta_2 \nu_{t-1}^2 + (1 - \beta_2)\, n^2} \quad
            (\texttt{norm\_type=2}); \qquad \beta_2 \nu_{t-1} + (1 - \beta_2)\, n \quad (\texttt{0}) \\
        d &= \nu_t / b_2 + \epsilon, \quad b_1 = 1 - \beta_1^t, \quad b_2 = \sqrt{1 - \beta_2^t}
            \text{ (both 1 without bias\_correction)} \\
        \text{default:}\quad m &\leftarrow \beta_1 m + \beta_3 g, \quad u = (m / b_1) / d + \lambda p \\
        \text{reg\_inside\_moment:}\quad g &\leftarrow g / d + \lambda p, \quad
            m \leftarrow \beta_1 m + \beta_3 g, \quad u = m / b_1

    and the learning rate follows (apex: :math:`p \leftarrow p - \eta u`). :math:`n^2` is
    taken as the square of the norm (apex sums the squares: equal up to rounding). The
    norms are per-param reductions (``Needs.PER_PARAM``: segmented on the adapter's flat
    buffers); :math:`\nu` is one scalar per param. Needs ``params`` when :math:`\lambda \ne 0`.

    Args:
      b1: :math:`\beta_1` in [0, 1). Default 0.9.
      b2: :math:`\beta_2` in [0, 1). Default 0.999.
      eps: :math:`\epsilon` >= 0. Default 1e-8.
      bias_correction: divide by :math:`b_1` and :math:`b_2`. Default True.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      grad_averaging: :math:`\beta_3 = 1 - \beta_1` (else 1). Default True.
      reg_inside_moment: normalise and decay the gradient before the momentum (the paper's
        form) rather than the update. Default False.
      norm_type: 2 (L2 norm) or 0 (infinity norm). Default 2.
      init_zero: start :math:`\nu` at 0 rather than at the first norm. Default False.

    References:
      Ginsburg et al., *Stochastic Gradient Methods with Layer-wise Adaptive Moments for
      Training of Deep Networks*, 2019, arXiv:1905.11286.

    Example:
      >>> import torch, functional_optim as fo
      >>> tx = fo.scale_by_apex_novograd(eps=0.0)
      >>> params = {"w": torch.zeros(2)}
      >>> u, state = tx.update({"w": torch.tensor([3.0, 4.0])}, tx.init(params))
      >>> u["w"], state.nu["w"]  # nu = ||g|| = 5; u = (m / b1) / (nu / b2) = g * sqrt(1 - b2) / 5
      (tensor([0.0190, 0.0253]), tensor(5.))
    """
    check_range("b1", b1, 0.0, 1.0)
    check_range("b2", b2, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0)
    for name, flag in (("bias_correction", bias_correction), ("grad_averaging", grad_averaging),
                       ("reg_inside_moment", reg_inside_moment), ("init_zero", init_zero)):
        _flag(name, flag)
    if norm_type not in (0, 2) or isinstance(norm_type, bool):
        raise ValueError(f"norm_type must be 2 (L2 norm) or 0 (infinity norm), got {norm_type!r}")
    decay = not _is_zero(weight_decay)
    b3 = 1 - b1 if grad_averaging else 1.0

    def init_fn(params):
        leaves, spec = optree.tree_flatten(params, none_is_leaf=True)
        present = [p for p in leaves if p is not None]
        made = iter(k.param_scalars(present, 0.0, [k.norm_dtype([p]) for p in present]))
        nu = optree.tree_unflatten(spec, [None if p is None else next(made) for p in leaves])
        return ScaleByApexNovogradState(count=steps.zero_count(steps.first_device(params)),
                                        leaf_count=steps.leaf_counts(params), mu=zeros_like(params), nu=nu)

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del extra
        if decay:
            _needs_params("scale_by_apex_novograd", params)
        trees = dict(leaf_count=state.leaf_count, mu=state.mu, nu=state.nu)
        sel = select(updates, **trees, params=params) if decay else select(updates, **trees)
        count = state.count + 1
        g = sel.updates
        if not g:
            return updates, state._replace(count=count)
        nus = sel["nu"]
        acc = k.norm_dtype(g + nus)
        n = k.norms(g, acc) if norm_type == 2 else k.max_norms(g, acc)
        if bias_correction:
            bc1, bc2 = steps.per_leaf(lambda t: (1 - b1 ** t, (1 - b2 ** t).sqrt()), [count], g[:1])
            bc1, bc2 = bc1[0], bc2[0]
        else:
            bc1 = bc2 = None
        first = state.count == 0

        def blend(v, norm):
            if not init_zero:  # apex starts from the first norm, so the first blend keeps it
                v = torch.where(first, norm, v)
            if norm_type == 2:
                v = k.sqrt([v * v * b2 + (1 - b2) * (norm * norm)])[0]
            else:
                v = v * b2 + (1 - b2) * norm
            unbiased = v if bc2 is None else v / bc2.to(v.dtype)
            return v, unbiased + eps

        new_nu, denom = k.leafwise(blend, nus, n, dtype=acc)
        new_nu = k.cast(new_nu, [v.dtype for v in nus])
        dtypes = [x.dtype for x in g]
        if reg_inside_moment:
            g = k.cast(k.div(g, denom, donate=donate), dtypes)
            if decay:
                g = k.add(g, sel["params"], weight_decay, donate=True)
            mu = k.add(k.mul(sel["mu"], b1, donate=donate), g, b3, donate=True)
            out = k.div(mu, 1.0 if bc1 is None else bc1)  # a new tensor: mu stays the state
        else:
            mu = k.add(k.mul(sel["mu"], b1, donate=donate), g, b3, donate=True)
            m_hat = mu if bc1 is None else k.div(mu, bc1)
            out = k.cast(k.div(m_hat, denom, donate=bc1 is not None), dtypes)
            if decay:
                out = k.add(out, sel["params"], weight_decay, donate=True)
        new_state = ScaleByApexNovogradState(
            count=count, leaf_count=sel.rebuild(steps.increment(sel["leaf_count"], donate=donate), "leaf_count"),
            mu=sel.rebuild(mu, "mu"), nu=sel.rebuild(new_nu, "nu"))
        return sel.rebuild(out), new_state

    return declare(GradientTransformation(init_fn, update_fn), Needs.PER_PARAM)
