"""bitsandbytes' optimizers (``bitsandbytes.optim``) with its argument names, order and
defaults: ``fo.bitsandbytes.<snake_case of its class>``.

The 32-bit classes' math, as bitsandbytes' kernels compute it, is that of existing
transforms: its Adam *and* AdamW both decay the params decoupled (``p *= 1 - lr * wd``,
so its ``Adam`` is AdamW with ``weight_decay=0`` by default); its SGD is heavy-ball
momentum with coupled decay that ignores ``dampening`` and ``nesterov`` (accepted, never
used by its kernels); its Lion is Lion. AdEMAMix is :func:`~functional_optim.scale_by_ademamix`.
The ``8bit`` versions are the same math under :func:`~functional_optim.quantized_state`:
moments of params with at least ``min_8bit_size`` elements kept as 8-bit codes in blocks
of 256 (bitsandbytes' blockwise optimizers), smaller ones in full precision.
"""

from __future__ import annotations

from typing import Any, Optional

from ..base import GradientTransformation, ScalarOrSchedule
from ..combine import chain
from ..hyperparams import check_range
from ..transforms import add_decayed_weights, scale_by_adam, scale_by_learning_rate
from ..transforms.ademamix import scale_by_ademamix
from ..wrappers.quantized_state import quantized_state
from .sgd import sgd as _torch_sgd
from .timm_lion import lion as _timm_lion

__all__ = ["adam", "adam8bit", "adamw", "adamw8bit", "sgd", "sgd8bit", "lion", "lion8bit",
           "ademamix", "ademamix8bit"]

BLOCK_SIZE = 256  # bitsandbytes' optimizers quantise in blocks of 256


def _betas(betas: Any, count: int) -> tuple:
    if not isinstance(betas, (tuple, list)) or len(betas) != count:
        raise ValueError(f"Invalid betas: {betas!r} (expected a tuple of {count} numbers)")
    for i, b in enumerate(betas):
        check_range(f"betas[{i}]", b, 0.0, 1.0)
    return tuple(betas)


def _bits(optim_bits: Any) -> None:
    if optim_bits not in (8, 32) or isinstance(optim_bits, bool):
        raise ValueError(f"Invalid optim_bits: {optim_bits!r} (expected 8 or 32)")


def _eight_bit(tx: GradientTransformation, optim_bits: int, min_8bit_size: int,
               rounding: str) -> GradientTransformation:
    _bits(optim_bits)
    if optim_bits == 32:
        return tx
    return quantized_state(tx, block_size=BLOCK_SIZE, min_size=min_8bit_size, rounding=rounding)


def _decayed(core: GradientTransformation, lr: ScalarOrSchedule, weight_decay: Any) -> GradientTransformation:
    # p * (1 - lr * wd) - lr * u  ==  p - lr * (u + wd * p): decoupled decay as one update
    check_range("lr", lr, 0.0, schedule_ok=True)
    check_range("weight_decay", weight_decay, 0.0)
    return chain(core, add_decayed_weights(weight_decay), scale_by_learning_rate(lr))


def adam(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0, optim_bits: int = 32, min_8bit_size: int = 4096, *,
         rounding: str = "nearest") -> GradientTransformation:
    r"""``bitsandbytes.optim.Adam``: Adam with *decoupled* decay (as its kernels do).

    .. math::

        m &\leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        p &\leftarrow p\,(1 - \eta\lambda) - \eta\, \frac{m / (1-\beta_1^t)}{\sqrt{v} / \sqrt{1-\beta_2^t} + \epsilon}

    Args:
      lr: learning rate :math:`\eta` >= 0 (number, 0-d tensor or schedule). Default 1e-3.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
      eps: :math:`\epsilon` >= 0. Default 1e-8.
      weight_decay: :math:`\lambda` >= 0 (decoupled). Default 0.
      optim_bits: 32, or 8 for 8-bit blockwise moments. Default 32.
      min_8bit_size: smallest param quantised with ``optim_bits=8``. Default 4096.
      rounding: ``"nearest"`` or ``"cpu_lut"`` (see :func:`~functional_optim.quantized_state`).

    References:
      Kingma & Ba, *Adam*, arXiv:1412.6980; Dettmers et al., *8-bit Optimizers via
      Block-wise Quantization*, arXiv:2110.02861.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.bitsandbytes.adam(lr=0.1, weight_decay=0.5)
      >>> params = {"w": torch.ones(2)}
      >>> u, state = opt.update({"w": torch.ones(2)}, opt.init(params), params)
      >>> fo.apply_updates(params, u)["w"]  # 1 * (1 - 0.05) - 0.1
      tensor([0.8500, 0.8500])
    """
    b1, b2 = _betas(betas, 2)
    check_range("eps", eps, 0.0)
    return _eight_bit(_decayed(scale_by_adam(b1, b2, eps), lr, weight_decay), optim_bits, min_8bit_size, rounding)


def adamw(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 1e-2, optim_bits: int = 32, min_8bit_size: int = 4096, *,
          rounding: str = "nearest") -> GradientTransformation:
    """``bitsandbytes.optim.AdamW``: :func:`adam` with ``weight_decay=1e-2`` by default.

    Example:
      >>> import functional_optim as fo
      >>> fo.needs(fo.bitsandbytes.adamw())
      <Needs.ELEMENTWISE: 0>
    """
    return adam(lr, betas, eps, weight_decay, optim_bits, min_8bit_size, rounding=rounding)


def adam8bit(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.999), eps: float = 1e-8,
             weight_decay: float = 0, min_8bit_size: int = 4096, *,
             rounding: str = "nearest") -> GradientTransformation:
    """``bitsandbytes.optim.Adam8bit``: :func:`adam` with ``optim_bits=8``.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.bitsandbytes.adam8bit(min_8bit_size=256)
      >>> opt.init({"w": torch.ones(300)}).inner[0].mu["w"].dtype
      torch.uint8
    """
    return adam(lr, betas, eps, weight_decay, 8, min_8bit_size, rounding=rounding)


def adamw8bit(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any] = (0.9, 0.999), eps: float = 1e-8,
              weight_decay: float = 1e-2, min_8bit_size: int = 4096, *,
              rounding: str = "nearest") -> GradientTransformation:
    """``bitsandbytes.optim.AdamW8bit``: :func:`adamw` with ``optim_bits=8``.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.bitsandbytes.adamw8bit()
      >>> opt.init({"w": torch.ones(300)}).inner[0].mu["w"].dtype  # < min_8bit_size: 32-bit
      torch.float32
    """
    return adam(lr, betas, eps, weight_decay, 8, min_8bit_size, rounding=rounding)


def sgd(lr: ScalarOrSchedule, momentum: float = 0, dampening: float = 0, weight_decay: float = 0,
        nesterov: bool = False, optim_bits: int = 32, min_8bit_size: int = 4096, *,
        rounding: str = "nearest") -> GradientTransformation:
    r"""``bitsandbytes.optim.SGD``: heavy-ball momentum with coupled decay.

    .. math::

        d = g + \lambda p, \quad b \leftarrow d \text{ (first step) or } \mu b + d, \quad
        p \leftarrow p - \eta b

    ``dampening`` and ``nesterov`` are accepted and ignored, as bitsandbytes' kernels
    ignore them (``fo.sgd`` has torch's versions of both).

    Args:
      lr: learning rate :math:`\eta` >= 0 (required).
      momentum: :math:`\mu` in (0, 1): bitsandbytes has no momentum-free SGD. Default 0
        (which raises, as bitsandbytes does).
      dampening: ignored. Default 0.
      weight_decay: :math:`\lambda` >= 0 (coupled). Default 0.
      nesterov: ignored. Default False.
      optim_bits: 32, or 8 for an 8-bit blockwise momentum. Default 32.
      min_8bit_size: smallest param quantised with ``optim_bits=8``. Default 4096.
      rounding: ``"nearest"`` or ``"cpu_lut"``.

    References:
      Polyak, *Some methods of speeding up the convergence of iteration methods*, 1964.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.bitsandbytes.sgd(0.1, momentum=0.9, nesterov=True)
      >>> params = {"w": torch.ones(2)}
      >>> u, state = opt.update({"w": torch.ones(2)}, opt.init(params), params)
      >>> u["w"]
      tensor([-0.1000, -0.1000])
    """
    check_range("momentum", momentum, 0.0, 1.0)
    if momentum == 0:
        raise ValueError("Invalid momentum: 0 (bitsandbytes' SGD needs momentum > 0)")
    return _eight_bit(_torch_sgd(lr, momentum, 0, weight_decay, False), optim_bits, min_8bit_size, rounding)


def sgd8bit(lr: ScalarOrSchedule, momentum: float = 0, dampening: float = 0, weight_decay: float = 0,
            nesterov: bool = False, min_8bit_size: int = 4096, *,
            rounding: str = "nearest") -> GradientTransformation:
    """``bitsandbytes.optim.SGD8bit``: :func:`sgd` with ``optim_bits=8``.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.bitsandbytes.sgd8bit(0.1, 0.9, min_8bit_size=8).init([torch.ones(8)]).absmax[0].trace[0]
      tensor([0.])
    """
    return sgd(lr, momentum, dampening, weight_decay, nesterov, 8, min_8bit_size, rounding=rounding)


def lion(lr: ScalarOrSchedule = 1e-4, betas: tuple[Any, Any] = (0.9, 0.99), weight_decay: float = 0,
         optim_bits: int = 32, min_8bit_size: int = 4096, *, rounding: str = "nearest") -> GradientTransformation:
    r"""``bitsandbytes.optim.Lion``: :math:`p \leftarrow p(1-\eta\lambda) - \eta\,
    \operatorname{sign}(\beta_1 m + (1-\beta_1) g)`, then :math:`m \leftarrow \beta_2 m + (1-\beta_2) g`
    (``fo.timm.lion``'s math).

    Args:
      lr: learning rate :math:`\eta` >= 0. Default 1e-4.
      betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.99).
      weight_decay: :math:`\lambda` >= 0 (decoupled). Default 0.
      optim_bits: 32, or 8 for an 8-bit blockwise momentum. Default 32.
      min_8bit_size: smallest param quantised with ``optim_bits=8``. Default 4096.
      rounding: ``"nearest"`` or ``"cpu_lut"``.

    References:
      Chen et al., *Symbolic Discovery of Optimization Algorithms*, 2023, arXiv:2302.06675.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.bitsandbytes.lion(lr=0.1)
      >>> params = {"w": torch.ones(2)}
      >>> opt.update({"w": torch.tensor([2.0, -1.0])}, opt.init(params), params)[0]["w"]
      tensor([-0.1000,  0.1000])
    """
    b1, b2 = _betas(betas, 2)
    return _eight_bit(_timm_lion(lr, (b1, b2), weight_decay), optim_bits, min_8bit_size, rounding)


def lion8bit(lr: ScalarOrSchedule = 1e-4, betas: tuple[Any, Any] = (0.9, 0.99), weight_decay: float = 0,
             min_8bit_size: int = 4096, *, rounding: str = "nearest") -> GradientTransformation:
    """``bitsandbytes.optim.Lion8bit``: :func:`lion` with ``optim_bits=8``.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.bitsandbytes.lion8bit(min_8bit_size=4).init([torch.ones(4)]).inner[0].mu[0].dtype
      torch.uint8
    """
    return lion(lr, betas, weight_decay, 8, min_8bit_size, rounding=rounding)


def ademamix(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any, Any] = (0.9, 0.999, 0.9999),
             alpha: float = 5.0, t_alpha: Optional[int] = None, t_beta3: Optional[int] = None,
             eps: float = 1e-8, weight_decay: float = 1e-2, optim_bits: int = 32, min_8bit_size: int = 4096, *,
             rounding: str = "nearest") -> GradientTransformation:
    r"""``bitsandbytes.optim.AdEMAMix``: :func:`~functional_optim.scale_by_ademamix`,
    decoupled decay and the step: :math:`p \leftarrow p(1-\eta\lambda) - \eta u`.

    Args:
      lr: learning rate :math:`\eta` >= 0. Default 1e-3.
      betas: ``(beta1, beta2, beta3)``, each in [0, 1). Default (0.9, 0.999, 0.9999).
      alpha: weight of the slow EMA >= 0. Default 5.0.
      t_alpha: warm-up period of alpha (int) or None (default).
      t_beta3: warm-up period of beta3 (int) or None (default).
      eps: >= 0. Default 1e-8.
      weight_decay: :math:`\lambda` >= 0 (decoupled). Default 1e-2.
      optim_bits: 32, or 8 for 8-bit blockwise moments. Default 32.
      min_8bit_size: smallest param quantised with ``optim_bits=8``. Default 4096.
      rounding: ``"nearest"`` or ``"cpu_lut"``.

    References:
      Pagliardini, Ablin & Grangier, *The AdEMAMix Optimizer: Better, Faster, Older*,
      2024, arXiv:2409.03137.

    Example:
      >>> import torch, functional_optim as fo
      >>> opt = fo.bitsandbytes.ademamix(lr=0.1, weight_decay=0.0, alpha=0.0)
      >>> params = {"w": torch.ones(2)}
      >>> opt.update({"w": torch.tensor([2.0, -1.0])}, opt.init(params), params)[0]["w"]
      tensor([-0.1000,  0.1000])
    """
    b1, b2, b3 = _betas(betas, 3)
    core = scale_by_ademamix(b1, b2, b3, alpha, eps, t_alpha, t_beta3)
    return _eight_bit(_decayed(core, lr, weight_decay), optim_bits, min_8bit_size, rounding)


def ademamix8bit(lr: ScalarOrSchedule = 1e-3, betas: tuple[Any, Any, Any] = (0.9, 0.999, 0.9999),
                 alpha: float = 5.0, t_alpha: Optional[int] = None, t_beta3: Optional[int] = None,
                 eps: float = 1e-8, weight_decay: float = 1e-2, min_8bit_size: int = 4096, *,
                 rounding: str = "nearest") -> GradientTransformation:
    """``bitsandbytes.optim.AdEMAMix8bit``: :func:`ademamix` with ``optim_bits=8``.

    Example:
      >>> import torch, functional_optim as fo
      >>> s = fo.bitsandbytes.ademamix8bit(min_8bit_size=4).init([torch.ones(4)])
      >>> s.inner[0].mu_slow[0].dtype, s.inner[0].nu[0].dtype
      (torch.uint8, torch.uint8)
    """
    return ademamix(lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 8, min_8bit_size, rounding=rounding)
