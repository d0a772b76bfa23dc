"""timm's ``Kron`` (PSGD with a Kronecker-factored preconditioner), with timm's argument
names, order, defaults and numerics (``fo.timm.kron``, also ``fo.kron``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..base import GradientTransformation
from ..transforms.kron import scale_by_kron
from ._common import number, reject
from .timm_layerwise import max_lr_for

__all__ = ["kron"]

Number = float | torch.Tensor


def kron(lr: Number = 0.001, momentum: Number = 0.9, weight_decay: Number = 0.0,
         preconditioner_update_probability: float | Callable[[int], Any] | None = None,
         max_size_triangular: int = 2048, min_ndim_triangular: int = 2, memory_save_mode: str | None = None,
         momentum_into_precond_update: bool = True, precond_lr: Number = 0.1, precond_init_scale: float = 1.0,
         mu_dtype: torch.dtype | None = None, precond_dtype: torch.dtype | None = None,
         decoupled_decay: bool = False, corrected_weight_decay: bool = False, flatten: bool = False,
         flatten_start_dim: int = 2, flatten_end_dim: int = -1, stochastic_weight_decay: bool = False,
         deterministic: bool = False, *, max_lr_snapshot: Number | None = None,
         rng_seed: int = 1337) -> GradientTransformation:
    r"""PSGD Kron exactly as ``timm.optim.Kron`` (same names, order and defaults).

    The whole step is :func:`functional_optim.transforms.scale_by_kron` (see there for the math, in
    the order computed): momentum :math:`m`, debiased; a Kronecker-factored
    preconditioner :math:`Q` fitted with probability :math:`\pi_t` per step (PSGD's
    Lie-group update on a Gaussian probe, triangular solves in float32), occasionally
    balanced; the update :math:`d = Q^H Q \hat m` capped at RMS 1.1; weight decay coupled
    (:math:`d + \lambda p`), decoupled (:math:`p (1 - \eta\lambda)`) or corrected
    (:math:`p (1 - \eta^2 \lambda / \eta_{\max})`), optionally stochastic; then
    :math:`p \leftarrow p - \eta d`. timm registers it as ``kron``, ``kronw``
    (``decoupled_decay=True``) and ``kronc`` (also ``corrected_weight_decay=True``).

    The random draws (balancing, probes, stochastic decay) come from generators held in
    the state (``random.Random(rng_seed)``, timm's 1337, and a torch generator unless
    ``deterministic``), so ``update`` is pure; it reads them on the host, so it runs
    eagerly (not under ``vmap`` or ``torch.compile``).

    Args:
      lr: learning rate :math:`\eta` >= 0. Default 1e-3.
      momentum: :math:`\beta` in [0, 1). Default 0.9.
      weight_decay: :math:`\lambda` >= 0. Default 0.
      preconditioner_update_probability: a probability, a callable of the step, or None
        (default: anneal from 1 to 0.03, :func:`~functional_optim.transforms.kron.precond_update_prob_schedule`).
      max_size_triangular: larger dims get diagonal factors. Default 2048.
      min_ndim_triangular: tensors with fewer dims get diagonal factors. Default 2.
      memory_save_mode: None (default), ``"one_diag"``, ``"smart_one_diag"``, ``"all_diag"``.
      momentum_into_precond_update: fit the preconditioner on the momentum. Default True.
      precond_lr: the preconditioner's step size > 0. Default 0.1.
      precond_init_scale: the initial :math:`Q = sI`. Default 1.
      mu_dtype: momentum dtype (None: the param's). Default None.
      precond_dtype: preconditioner dtype (None: the param's). Default None.
      decoupled_decay: AdamW-style decay of the params. Default False.
      corrected_weight_decay: decoupled decay scaled by :math:`\eta^2/\eta_{\max}`. Default False.
      flatten: precondition params flattened over dims ``flatten_start_dim..flatten_end_dim``
        (defaults 2, -1). Default False.
      stochastic_weight_decay: decay scaled by :math:`2u`, :math:`u \sim U[0, 1)`. Default False.
      deterministic: seed each probe from the Python generator. Default False.
      max_lr_snapshot: :math:`\eta_{\max}` of the corrected decay (timm's group key); None
        (default): ``lr``.
      rng_seed: seed of the generators. Default 1337 (timm's).

    References:
      Li, *Preconditioned Stochastic Gradient Descent*, 2015, arXiv:1512.04202.
      Li, *Preconditioner on Matrix Lie Group for SGD*, 2018, arXiv:1809.10232.
      Defazio, *Why Gradients Rapidly Increase Near the End of Training*, 2025, arXiv:2506.02285.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.timm.kron(lr=0.1)
      >>> params = {"w": torch.zeros(3)}
      >>> u, _ = opt.update({"w": torch.tensor([1.0, 1.0, 1.0])}, opt.init(params), params)
      >>> float(u["w"].square().mean().sqrt()) <= 0.1 * 1.1  # the step's RMS is at most 1.1 lr
      True
    """
    v_lr, v_mom, v_wd = (number(n, x) for n, x in (("lr", lr), ("momentum", momentum),
                                                   ("weight_decay", weight_decay)))
    reject(v_lr is not None and v_lr < 0, f"Invalid learning rate: {lr}", "lr must be >= 0")
    reject(v_mom is not None and not 0 <= v_mom < 1, f"Invalid beta parameter: {momentum}",
            "momentum must be in [0, 1)")
    reject(v_wd is not None and v_wd < 0, f"Invalid weight_decay value: {weight_decay}",
            "weight_decay must be >= 0")
    if not isinstance(corrected_weight_decay, bool):
        raise TypeError(f"corrected_weight_decay must be a bool, got {type(corrected_weight_decay).__name__}")
    max_lr = max_lr_for(lr, corrected_weight_decay, max_lr_snapshot)
    return scale_by_kron(
        lr, momentum, weight_decay, preconditioner_update_probability, max_size_triangular,
        min_ndim_triangular, memory_save_mode, momentum_into_precond_update, precond_lr, precond_init_scale,
        mu_dtype, precond_dtype, decoupled_decay,
        max_lr if decoupled_decay and corrected_weight_decay else None, flatten, flatten_start_dim,
        flatten_end_dim, stochastic_weight_decay, deterministic, rng_seed)
