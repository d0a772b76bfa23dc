"""``LBFGS``: torch.optim.LBFGS's drop-in, driving ``fo.lbfgs`` from a closure."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

import functional_optim as fo

from functional_optim.aliases.lbfgs import history_rows

from .optimizer import Entry
from .torch_optim import _TorchCompatible

_S = "LBFGSState."
_HISTORY = ("old_dirs", "old_stps", "ro")


class LBFGS(_TorchCompatible):
    """``torch.optim.LBFGS`` on the functional engine (``fo.lbfgs``), with torch's signature.

    ``step(closure)`` calls the closure (which must zero the grads, compute the loss, call
    ``backward`` and return the loss) as often as torch would, at the same points. The
    state_dict is torch's (kept on the first param), so checkpoints load both ways.

    Example:
      >>> import torch
      >>> from adapters import LBFGS
      >>> w = torch.nn.Parameter(torch.tensor([1.5, -0.5]))
      >>> opt = LBFGS([w], line_search_fn="strong_wolfe")
      >>> def closure():
      ...     opt.zero_grad()
      ...     loss = ((w - 1.0) ** 2).sum()
      ...     loss.backward()
      ...     return loss
      >>> _ = opt.step(closure)
      >>> torch.allclose(w, torch.ones(2))
      True
    """

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1, max_iter: int = 20,
                 max_eval: int | None = None, tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9,
                 history_size: int = 100, line_search_fn: str | None = None):
        if max_eval is None:  # torch stores the resolved value in the group
            max_eval = max_iter * 5 // 4
        self._setup(params, fo.lbfgs, dict(
            lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change, history_size=history_size,
            line_search_fn=line_search_fn), False)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_groups", None):
            # torch's checks of the group first (duplicate params, names): torch reports those
            torch.optim.Optimizer.add_param_group(self, param_group)
            self.param_groups.pop()
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any]) -> Any:  # type: ignore[override]
        """One torch LBFGS step: up to ``max_iter`` iterations, re-evaluating ``closure``."""
        if closure is None or not callable(closure):
            raise TypeError("LBFGS.step requires a closure that re-evaluates the model and returns the loss")
        group, rt = self.param_groups[0], self._groups[0]
        params = group["params"]
        rt.rebuild_if_needed(group)
        start = [p.detach().clone() for p in params]
        with torch.enable_grad():
            loss = closure()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params]
        tx = rt.eager_transform(group)
        new, rt.state = tx.update(grads, rt.state, start, value=loss, as_params=True,
                                  value_fn=self._value_fn(params, closure))
        for p, x in zip(params, new):
            p.copy_(x)
        return loss

    @staticmethod
    def _value_fn(params: list[torch.Tensor], closure: Callable[[], Any]) -> Callable[[Any], torch.Tensor]:
        """``fo.lbfgs``'s ``value_fn`` from a closure: move the params to the requested point,
        run the closure, and return a surrogate whose value is the loss and whose gradient
        with respect to the requested point is the closure's ``p.grad`` (exactly)."""

        def value_fn(point: list[torch.Tensor]) -> torch.Tensor:
            with torch.no_grad():
                for p, x in zip(params, point):
                    p.copy_(x)
            with torch.enable_grad():
                loss = closure()
            surrogate = torch.as_tensor(float(loss.detach() if isinstance(loss, torch.Tensor) else loss),
                                        dtype=torch.float64)
            for p, x in zip(params, point):
                if p.grad is not None:  # <x - x, g> is exactly 0 but carries g as x's gradient
                    surrogate = surrogate + ((x - x.detach()) * p.grad.detach()).sum()
            return surrogate

        return value_fn

    # -- torch's state layout: everything on the first param, history as lists ----------

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        first = out["param_groups"][0]["params"][0]
        out["state"] = {first: out["state"][first]} if first in out["state"] else {}
        return out

    def _export_entry(self, entry: Entry) -> Entry:
        if int(entry[_S + "n_iter"]) == 0:
            return {}  # torch keeps func_evals and n_iter only; the rest after a first iteration
        length, start = int(entry[_S + "history_len"]), int(entry[_S + "history_start"])
        size = entry[_S + "old_dirs"].shape[0]
        rows = [(start + i) % size for i in range(length)]
        out: Entry = {
            "func_evals": int(entry[_S + "func_evals"]), "n_iter": int(entry[_S + "n_iter"]),
            "d": entry[_S + "d"], "t": float(entry[_S + "t"]), "H_diag": entry[_S + "H_diag"],
            "prev_flat_grad": entry[_S + "prev_flat_grad"], "prev_loss": float(entry[_S + "prev_loss"]),
        }
        for name in _HISTORY:
            out[name] = [entry[_S + name][r] for r in rows]
        if out["n_iter"] >= 2:  # torch keeps the last two-loop's coefficients from its second iteration on
            out["al"] = _two_loop_coefficients(out, size)
        return out

    def _import_entry(self, entry: Entry) -> Entry:
        # torch's "al" is scratch of the two-loop recursion (written before it is read): not state
        if not entry:
            return {}
        out: Entry = {_S + name: torch.as_tensor(entry[name]) for name in ("func_evals", "n_iter")}
        if "d" not in entry:
            return out
        size = self.param_groups[0]["history_size"]
        for name in ("d", "t", "H_diag", "prev_flat_grad", "prev_loss"):
            out[_S + name] = torch.as_tensor(entry[name])
        history = [list(entry[name]) for name in _HISTORY]
        length = len(history[0])
        if length > size:
            raise ValueError(f"state_dict holds {length} history entries, history_size is {size}")
        d = out[_S + "d"]
        dirs, stps = (history_rows(size, d.numel(), d.dtype, d.device) for _ in range(2))
        ro = torch.zeros(size, dtype=d.dtype, device=d.device)
        for i in range(length):
            dirs[i], stps[i], ro[i] = history[0][i], history[1][i], torch.as_tensor(history[2][i])
        out.update({_S + "old_dirs": dirs, _S + "old_stps": stps, _S + "ro": ro,
                    _S + "history_len": torch.tensor(length), _S + "history_start": torch.tensor(0)})
        return out


def _two_loop_coefficients(entry: Entry, size: int) -> list[torch.Tensor | None]:
    """torch's ``state["al"]``: the first loop's coefficients of the last L-BFGS direction,
    recomputed from the history and the gradient it was computed from (``prev_flat_grad``,
    which the last iteration set right after it), in torch's order of operations:
    ``q = -g``, then for the newest entry ``i`` down to the oldest
    ``al[i] = <s_i, q> * ro_i`` and ``q -= al[i] * y_i``. Entries past the history are None.
    """
    al: list[torch.Tensor | None] = [None] * size
    q = entry["prev_flat_grad"].neg()
    for i in range(len(entry["old_dirs"]) - 1, -1, -1):
        al[i] = entry["old_stps"][i].dot(q) * entry["ro"][i]
        q.add_(entry["old_dirs"][i], alpha=-al[i])
    return al
