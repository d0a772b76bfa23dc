"""torch.optim's constructor checks for the drop-ins: same order, exception and message.

torch's optimizers check their hyperparameters before ``torch.optim.Optimizer.__init__``
looks at the params, so a bad value is reported as such even when ``params`` is bad too
(torch's own test database, ``optim_db``, relies on it: ``params=None`` with a bad lr must
raise the lr's ValueError). The drop-ins run these checks first; the functional aliases
validate again when the group's transform is built (with their own messages, for the
values torch does not check).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Check = Callable[[dict[str, Any]], None]


def _fail(condition: Any, message: str) -> None:
    if condition:
        raise ValueError(message)


def _lr_tensor_foreach(a: dict[str, Any]) -> None:
    # torch's foreach path without capturable cannot take a tensor lr (Adam, AdamW)
    _fail(isinstance(a["lr"], torch.Tensor) and a.get("foreach") and not a.get("capturable"),
          "lr as a Tensor is not supported for capturable=False and foreach=True")


def _lr_numel(a: dict[str, Any]) -> None:
    _fail(isinstance(a["lr"], torch.Tensor) and a["lr"].numel() != 1, "Tensor lr must be 1-element")


def _at_least(name: str, label: str, low: float = 0.0, strict: bool = False,
              message: str = "Invalid {label}: {value}", index: int | None = None) -> Check:
    """``low <= a[name]`` (``<`` if strict; of ``a[name][index]`` if given; None passes),
    else torch's ``message``."""
    def check(a: dict[str, Any]) -> None:
        value = a[name] if index is None else a[name][index]
        if value is not None:
            _fail(not (low < value if strict else low <= value), message.format(label=label, value=value))
    return check


def _should(name: str, label: str, low: float = 0.0, index: int | None = None) -> Check:
    """The newer classes' wording (Adafactor, Muon): ``<label> should be >= <low> but is: <value>``."""
    return _at_least(name, label, low, message=f"{{label}} should be >= {low:g} but is: {{value}}", index=index)


def _beta2_decay(a: dict[str, Any]) -> None:
    _fail(not 0.0 >= a["beta2_decay"], f"beta2_decay should be <= 0 but is: {a['beta2_decay']}")


def _adjust_lr_fn(a: dict[str, Any]) -> None:
    fn = a.get("adjust_lr_fn")
    _fail(fn is not None and fn not in ("original", "match_rms_adamw"),
          f"Adjust learning rate function {fn} is not supported")


def _unit(name: str, label: str) -> Check:
    """``0 <= a[name] <= 1`` (Adadelta's rho)."""
    def check(a: dict[str, Any]) -> None:
        _fail(not 0.0 <= a[name] <= 1.0, f"Invalid {label}: {a[name]}")
    return check


def _beta(index: int) -> Check:
    def check(a: dict[str, Any]) -> None:
        value = a["betas"][index]
        _fail(not 0.0 <= value < 1.0, f"Invalid beta parameter at index {index}: {value}")
    return check


def _betas_kind(a: dict[str, Any]) -> None:
    kinds = {isinstance(b, torch.Tensor) for b in a["betas"]}
    floats = all(isinstance(b, float) for b in a["betas"])
    _fail(not floats and kinds != {True}, "betas must be either both floats or both Tensors")


def _betas_tensors(a: dict[str, Any]) -> None:
    for i, beta in enumerate(a["betas"]):
        if isinstance(beta, torch.Tensor):
            _fail(a.get("foreach") and not a.get("capturable"),
                  f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True")
            _fail(beta.numel() != 1, f"Tensor betas[{i}] must be 1-element")


def _etas(a: dict[str, Any]) -> None:
    minus, plus = a["etas"]
    _fail(not 0.0 < minus < 1.0 < plus, f"Invalid eta values: {minus}, {plus}")


def _nesterov(a: dict[str, Any]) -> None:
    _fail(a["nesterov"] and (a["momentum"] <= 0 or a["dampening"] != 0),
          "Nesterov momentum requires a momentum and zero dampening")


_LR = (_lr_numel, _at_least("lr", "learning rate"))
_EPS = _at_least("eps", "epsilon value")
_WD = _at_least("weight_decay", "weight_decay value")
_BETAS = (_beta(0), _beta(1))
_ADAM = (_lr_tensor_foreach, *_LR, _EPS, *_BETAS, _WD, _betas_kind, _betas_tensors)

# per drop-in, torch's checks in torch's order
CHECKS: dict[str, tuple[Check, ...]] = {
    "SGD": (*_LR, _at_least("momentum", "momentum value"), _WD, _nesterov),
    "Adam": _ADAM,
    "AdamW": _ADAM,
    "Adadelta": (*_LR, _unit("rho", "rho value"), _EPS, _WD),
    "Adagrad": (*_LR, _at_least("lr_decay", "lr_decay value"), _WD,
                _at_least("initial_accumulator_value", "initial_accumulator_value value"), _EPS),
    "Adamax": (*_LR, _EPS, *_BETAS, _WD),
    "NAdam": (*_LR, _EPS, *_BETAS, _WD, _at_least("momentum_decay", "momentum_decay value")),
    "RAdam": (*_LR, _EPS, *_BETAS, _WD),
    "ASGD": (*_LR, _WD),
    "RMSprop": (*_LR, _EPS, _at_least("momentum", "momentum value"), _WD, _at_least("alpha", "alpha value")),
    "Rprop": (*_LR, _etas),
    "SparseAdam": (_lr_numel, _at_least("lr", "learning rate", strict=True),
                   _at_least("eps", "epsilon value", strict=True), *_BETAS),
    "LBFGS": _LR,
    "Adafactor": (_lr_numel, _should("lr", "Learning rate"), _beta2_decay, _should("eps", "epsilon1", index=0),
                  _should("eps", "epsilon2", index=1), _should("d", "Clipping threshold d", 1.0),
                  _should("weight_decay", "weight_decay")),
    "Muon": (_lr_numel, _should("lr", "Learning rate"), _should("momentum", "momentum"),
             _should("weight_decay", "weight decay"), _adjust_lr_fn),
}


def check_arguments(name: str, arguments: dict[str, Any]) -> None:
    """Run torch's constructor checks of ``torch.optim.<name>`` on ``arguments``.

    Args:
      name: the torch class's name (``"Adam"``); names without checks here pass.
      arguments: the constructor's keyword arguments (hyperparameters and flags).

    Raises:
      ValueError: torch's message for the first bad value, in torch's order.

    Example:
      >>> from adapters.torch_checks import check_arguments
      >>> check_arguments("Adadelta", dict(lr=1.0, rho=1.1, eps=1e-6, weight_decay=0))
      Traceback (most recent call last):
      ...
      ValueError: Invalid rho value: 1.1
    """
    for check in CHECKS.get(name, ()):
        check(arguments)
