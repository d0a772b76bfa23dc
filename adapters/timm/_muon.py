"""``timm.optim.Muon`` on the functional engine (``fo.timm.muon``).

No ``from __future__ import annotations`` here: the signature prints exactly as timm's.
"""

from collections.abc import Sequence
from typing import Any, List, Optional, Tuple, Union

import torch
from torch.optim.optimizer import ParamsT

import functional_optim as fo
from functional_optim.aliases.timm_muon import _fallback_scale
from functional_optim.hyperparams import concrete

from ..optimizer import Entry
from ..torch_optim import _TorchCompatible, _torch_step

__all__ = ["Muon"]

NSCoeff = Union[str, Tuple[float, float, float], List[Tuple[float, float, float]]]

# timm's optional group keys, held here as None when a group does not set them
_ROUTING_KEYS = ("use_fallback", "use_muon")


def _numbers(value: Any) -> Any:
    """Coefficient triples as Python numbers (the adapter feeds numbers as 0-d tensors;
    the iteration rounds as timm only with numbers)."""
    if isinstance(value, torch.Tensor):
        return concrete(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_numbers(v) for v in value] if isinstance(value, list) else tuple(_numbers(v) for v in value)
    return value


def _muon_group(lr=0.02, weight_decay=0, momentum=0.95, nesterov=False, ns_steps=5, ns_coefficients="quintic",
                eps=1e-7, safety_factor=1.0, adjust_lr_fn="match_rms_adamw", conv_mode="flatten",
                normalize_spatial=True, fallback_lr_scale=1.0, betas=(0.9, 0.95), algo="muon", scale_eps=False,
                verbose=False, use_fallback=None, use_muon=None):
    """``fo.timm.muon`` from a param group in timm's keys (``use_fallback`` / ``use_muon``
    route the whole group)."""
    return fo.timm.muon(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        ns_coefficients=_numbers(ns_coefficients), eps=eps, safety_factor=safety_factor,
                        adjust_lr_fn=adjust_lr_fn, conv_mode=conv_mode, normalize_spatial=normalize_spatial,
                        fallback_lr_scale=fallback_lr_scale, betas=betas, algo=algo, scale_eps=scale_eps,
                        verbose=verbose, use_fallback=use_fallback, use_muon=use_muon)


class Muon(_TorchCompatible):
    """``timm.optim.Muon`` on the functional engine (``fo.timm.muon``), with timm's
    signature, group keys and per-param state, so checkpoints load both ways: Muon params
    keep ``use_muon`` (True), ``momentum_buffer`` and, with ``algo="adamuon"``, ``step`` and
    ``exp_avg_sq``; AdamW-fallback params ``use_muon`` (False), ``step``, ``exp_avg``,
    ``exp_avg_sq``.

    Params are routed as timm routes them: a group with ``use_fallback=True`` (or
    ``use_muon=False``) to the fallback, ``use_muon=True`` to Muon, else by shape
    (matrices and conv weights to Muon, see
    :func:`~functional_optim.transforms.newton_schulz_timm.muon_suitable`).

    Args:
      params: an iterable of tensors or of param-group dicts.
      lr: learning rate >= 0. Default 0.02.
      weight_decay: decoupled decay >= 0. Default 0.
      momentum: Muon's momentum in [0, 1). Default 0.95.
      nesterov: Nesterov momentum (NAdamW for the fallback). Default False.
      ns_steps: Newton–Schulz steps. Default 5.
      ns_coefficients: a preset name, a triple or a list of triples. Default "quintic".
      eps: epsilon of the iteration, AdaMuon and the fallback. Default 1e-7.
      safety_factor: multiplies the norm the iteration divides by. Default 1.0.
      adjust_lr_fn: the shape factor of the lr. Default "match_rms_adamw".
      conv_mode: "flatten" or "batched". Default "flatten".
      normalize_spatial: batched convs scaled by ``prod(kernel)**-0.5``. Default True.
      adamw_lr: deprecated: ``fallback_lr_scale = adamw_lr / lr`` (FutureWarning). Default None.
      fallback_lr_scale: the fallback's lr is ``lr * fallback_lr_scale``. Default 1.0.
      betas: the fallback's ``(beta1, beta2)``; beta2 also AdaMuon's. Default (0.9, 0.95).
      algo: "muon" or "adamuon". Default "muon".
      scale_eps: the iteration's eps scaled for μP. Default False.
      capturable: must be False (CUDA graphs are not supported: ValueError).
      verbose: accepted; routing is not logged.

    Differences: routing is decided from the group and shape at every step (timm caches it
    in the state at a param's first step); every group holds ``use_fallback`` and
    ``use_muon`` keys (None when not set; left out of ``state_dict()`` then, as timm has
    none); tuple ``ns_coefficients`` are read when the group's transform is built.

    References:
      Jordan et al., *Muon: An optimizer for hidden layers in neural networks*, 2024,
      https://kellerjordan.github.io/posts/muon/. Si et al., *AdaMuon*, 2025, arXiv:2507.11005.

    Example:
      >>> import torch
      >>> from adapters.timm import Muon
      >>> model = torch.nn.Linear(8, 8)
      >>> opt = Muon(model.parameters(), lr=0.01)
      >>> model(torch.randn(4, 8)).sum().backward()
      >>> opt.step()
      >>> [list(s) for s in opt.state_dict()["state"].values()]
      [['use_muon', 'momentum_buffer'], ['use_muon', 'step', 'exp_avg', 'exp_avg_sq']]
    """

    def __init__(
            self,
            params: ParamsT,
            lr: float = 0.02,
            weight_decay: float = 0,
            momentum: float = 0.95,
            nesterov: bool = False,
            ns_steps: int = 5,
            ns_coefficients: NSCoeff = "quintic",
            eps: float = 1e-07,
            safety_factor: float = 1.0,
            adjust_lr_fn: Optional[str] = "match_rms_adamw",
            conv_mode: str = "flatten",
            normalize_spatial: bool = True,
            adamw_lr: Optional[float] = None,
            fallback_lr_scale: float = 1.0,
            betas: Tuple[float, float] = (0.9, 0.95),
            algo: str = "muon",
            scale_eps: bool = False,
            capturable: bool = False,
            verbose: bool = False,
    ):
        # timm's checks (and adamw_lr's conversion, with its warning) before the params are read
        tx_args = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                       ns_coefficients=ns_coefficients, eps=eps, safety_factor=safety_factor,
                       adjust_lr_fn=adjust_lr_fn, conv_mode=conv_mode, normalize_spatial=normalize_spatial,
                       fallback_lr_scale=fallback_lr_scale, betas=betas, algo=algo, scale_eps=scale_eps,
                       verbose=verbose)
        if adamw_lr is not None:
            tx_args["fallback_lr_scale"] = _fallback_scale(lr, adamw_lr, fallback_lr_scale)
        _muon_group(**tx_args)
        self._setup(params, _muon_group, dict(tx_args, capturable=capturable), False)

    # -- timm's state layout ----------------------------------------------------------------

    def _export_entry(self, entry: Entry) -> Entry:
        if "EmaState.ema" in entry:  # a Muon param
            if int(entry["EmaState.count"]) == 0:
                return {}
            out = {"use_muon": True, "momentum_buffer": entry["EmaState.ema"]}
            if "ScaleByAdamuonState.count" in entry:
                out["step"] = _torch_step(entry["ScaleByAdamuonState.count"])
                out["exp_avg_sq"] = entry["ScaleByAdamuonState.nu"]
            return out
        if "ScaleByAdamState.count" not in entry or int(entry["ScaleByAdamState.count"]) == 0:
            return {}
        return {"use_muon": False, "step": _torch_step(entry["ScaleByAdamState.count"]),
                "exp_avg": entry["ScaleByAdamState.mu"], "exp_avg_sq": entry["ScaleByAdamState.nu"]}

    def _import_entry(self, entry: Entry) -> Entry:
        step = entry.get("step")
        count = None if step is None else torch.as_tensor(step).to(torch.int32)
        if "momentum_buffer" in entry:
            out = {"EmaState.ema": entry["momentum_buffer"],
                   "EmaState.count": count if count is not None else torch.ones((), dtype=torch.int32)}
            if count is not None and "exp_avg_sq" in entry:
                out.update({"ScaleByAdamuonState.count": count, "ScaleByAdamuonState.nu": entry["exp_avg_sq"]})
            return out
        if count is None or "exp_avg" not in entry:
            return {}
        return {"ScaleByAdamState.count": count, "ScaleByAdamState.mu": entry["exp_avg"],
                "ScaleByAdamState.nu": entry["exp_avg_sq"]}

    # -- timm's group keys: use_fallback / use_muon only where a group sets them -------------

    def _build_state_dict(self) -> dict:
        state_dict = super()._build_state_dict()
        for group in state_dict["param_groups"]:
            for key in _ROUTING_KEYS:
                if group.get(key, 0) is None:
                    del group[key]
        return state_dict

    def _load(self, state_dict: dict) -> None:
        groups = [{**{key: None for key in _ROUTING_KEYS}, **group} for group in state_dict["param_groups"]]
        super()._load({**state_dict, "param_groups": groups})
