"""``timm.optim.RMSpropTF`` on the functional engine (``fo.timm.rmsprop_tf``)."""

from typing import Optional

import torch
from torch.optim.optimizer import ParamsT

import functional_optim as fo
from functional_optim.hyperparams import concrete

from ._adabelief import _reject
from ._adamw_legacy import _max_lr_snapshot
from ..optimizer import Entry
from ..torch_optim import _TorchCompatible


def _validate_scalar(name: str, value, min_value: float = 0.0) -> None:
    # timm's _validate_scalar message, then the rule naming the argument
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise ValueError(f"{name} must be a scalar or scalar tensor.")
    v = concrete(value)
    arg = {"learning rate": "lr", "epsilon": "eps"}.get(name, name)
    _reject(v is not None and v < min_value, f"Invalid {name}: {value}", f"{arg} must be >= {min_value}")


class RMSpropTF(_TorchCompatible):
    """``timm.optim.RMSpropTF`` on the functional engine (``fo.timm.rmsprop_tf``), with
    timm's signature, checks, group keys (``max_lr_snapshot``) and per-param state
    (``step`` as a float tensor, ``square_avg`` (starting at ones), ``momentum_buffer``
    with momentum, ``grad_avg`` with centered).

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 1e-2.
      alpha: smoothing constant >= 0. Default 0.9.
      eps: added inside the root, >= 0. Default 1e-10.
      weight_decay: >= 0. Default 0.
      momentum: >= 0. Default 0.
      centered: centered second moment. Default False.
      decoupled_decay: decoupled weight decay. Default False.
      corrected_weight_decay: decoupled decay scaled by ``lr**2 / max_lr_snapshot``. Default False.
      lr_in_momentum: the lr is accumulated in the momentum buffer (TensorFlow). Default True.
      caution: Cautious Optimizers' mask on the momentum step. Default False.
      foreach: accepted and ignored (the engine chooses).

    Invalid values raise ValueError with timm's message followed by the rule.

    References:
      Hinton, *Neural Networks for Machine Learning*, lecture 6e, 2012.

    Example:
      >>> import torch
      >>> from adapters.timm import RMSpropTF
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = RMSpropTF([w], momentum=0.9)
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> sorted(opt.state_dict()["state"][0])
      ['momentum_buffer', 'square_avg', 'step']
    """

    _state_keys = {"step": ("ScaleByRmsState.count",), "square_avg": ("ScaleByRmsState.nu",),
                   "grad_avg": ("ScaleByRmsState.mu",), "momentum_buffer": ("TraceState.trace",)}

    def __init__(
            self,
            params: ParamsT,
            lr: float = 1e-2,
            alpha: float = 0.9,
            eps: float = 1e-10,
            weight_decay: float = 0,
            momentum: float = 0.,
            centered: bool = False,
            decoupled_decay: bool = False,
            corrected_weight_decay: bool = False,
            lr_in_momentum: bool = True,
            caution: bool = False,
            foreach: Optional[bool] = None,
    ):
        _validate_scalar("learning rate", lr)
        _validate_scalar("epsilon", eps)
        _validate_scalar("momentum", momentum)
        _validate_scalar("weight_decay", weight_decay)
        a = concrete(alpha)
        _reject(a is not None and not 0.0 <= a, f"Invalid alpha value: {alpha}", "alpha must be >= 0")
        self._setup(params, fo.timm.rmsprop_tf, dict(
            lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered, weight_decay=weight_decay,
            decoupled_decay=decoupled_decay, corrected_weight_decay=corrected_weight_decay,
            max_lr_snapshot=_max_lr_snapshot(lr, corrected_weight_decay), lr_in_momentum=lr_in_momentum,
            caution=caution, foreach=foreach), False)

    def _import_entry(self, entry: Entry) -> Entry:
        out = super()._import_entry(entry)
        if "momentum_buffer" in entry and "step" in entry:  # the trace's own counter follows timm's step
            out["TraceState.count"] = torch.as_tensor(entry["step"]).to(torch.int32)
        return out
