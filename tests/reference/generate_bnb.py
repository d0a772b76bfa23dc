"""Record bitsandbytes 0.50.2's optimizer trajectories and blockwise quantisation into ``bnb.pt``.

Run from ``tests/reference`` with a Python that has bitsandbytes installed (the project
and its tests never import it; ``pip install --no-deps bitsandbytes==0.50.2`` into a
separate environment is enough): ``python generate_bnb.py``. Everything runs on bitsandbytes'
CPU backend, which computes in float32 (its kernels cast params and gradients to float32).

* ``maps``: ``create_dynamic_map(signed)`` for both signs.
* ``quant``: inputs spanning eight decades (with a zero block and a short last block),
  their codes and absmax from ``quantize_blockwise`` with block sizes 256 and 4096.
* ``cases``: every ``bitsandbytes.optim`` class timm registers (10), with several options,
  stepped ``STEPS`` times on fixed gradients for two float32 params: ``big`` (64 x 66:
  17 blocks of 256, the last one short) and ``small`` (10 elements, under
  ``min_8bit_size``: 32-bit state). Per case: the params after the steps in ``RECORD``
  (``traj``), the state_dict after the last step (``state``) and after step ``MID`` (``mid``).
* ``signatures``: ``str(inspect.signature(cls))`` per class.
"""

from __future__ import annotations

import inspect
import warnings

import torch

warnings.filterwarnings("ignore")
import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402

STEPS = 12
MID = 5
SHAPES = {"big": (64, 66), "small": (10,)}
RECORD = (1, 2, MID, STEPS)  # the steps whose params are kept

CASES = {
    "adam_default": ("Adam", dict(lr=1e-2)),
    "adam_wd": ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw_default": ("AdamW", dict(lr=1e-2)),
    "adam8bit_default": ("Adam8bit", dict(lr=1e-2)),
    "adam8bit_wd": ("Adam8bit", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw8bit_default": ("AdamW8bit", dict(lr=1e-2)),
    "sgd_momentum": ("SGD", dict(lr=1e-2, momentum=0.9, weight_decay=0.01, dampening=0.1, nesterov=True)),
    "sgd8bit_momentum": ("SGD8bit", dict(lr=1e-2, momentum=0.9, weight_decay=0.01, dampening=0.1, nesterov=True)),
    "lion_wd": ("Lion", dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)),
    "lion8bit_wd": ("Lion8bit", dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)),
    "ademamix_default": ("AdEMAMix", dict(lr=1e-2)),
    "ademamix_scheduled": ("AdEMAMix", dict(lr=1e-2, alpha=8.0, t_alpha=5, t_beta3=8, weight_decay=0.0)),
    "ademamix8bit_default": ("AdEMAMix8bit", dict(lr=1e-2)),
    "ademamix8bit_scheduled": ("AdEMAMix8bit", dict(lr=1e-2, alpha=8.0, t_alpha=5, t_beta3=8)),
}
CLASSES = ["SGD", "SGD8bit", "Adam", "Adam8bit", "AdamW", "AdamW8bit", "Lion", "Lion8bit", "AdEMAMix",
           "AdEMAMix8bit"]


def make_params(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=gen) * 0.5 for n, s in SHAPES.items()}


def make_grads(seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Gradients whose scale varies across elements (so blocks hold small and large values)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in range(STEPS):
        g = {}
        for n, s in SHAPES.items():
            scale = torch.exp(torch.randn(s, generator=gen) * 2.0)
            g[n] = torch.randn(s, generator=gen) * scale * (1.0 + 0.2 * t)
        g["big"][0, :3] = 0.0  # exact zeros
        out.append(g)
    return out


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


def _plain(sd: dict) -> dict:
    """The state_dict with tensors cloned (loadable with weights_only=True)."""
    def conv(v):
        if isinstance(v, torch.Tensor):
            return v.detach().clone()
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(conv(x) for x in v)
        return v
    return conv(sd)


def run_case(cls_name: str, kwargs: dict, grads: list[dict[str, torch.Tensor]]) -> dict:
    params = [torch.nn.Parameter(v.clone()) for v in make_params().values()]
    opt = getattr(bnb.optim, cls_name)(params, **kwargs)
    traj, mid = [], None
    for t in range(STEPS):
        for p, g in zip(params, grads[t].values()):
            p.grad = g.clone()
        opt.step()
        if t + 1 in RECORD:
            traj.append(_flat(params))
        if t + 1 == MID:
            mid = _plain(opt.state_dict())
    return {"traj": torch.stack(traj), "state": _plain(opt.state_dict()), "mid": mid}


def quant_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    n = 256 * 40 + 77
    x = torch.randn(n, generator=gen) * torch.exp(torch.randn(n, generator=gen) * 4.0)
    x[256:512] = 0.0  # an all-zero block
    return {"signed": x, "unsigned": x.abs()}


def main() -> None:
    maps = {"signed": F.create_dynamic_map(signed=True), "unsigned": F.create_dynamic_map(signed=False)}
    quant = {}
    for sign, x in quant_inputs().items():
        for block in (256, 4096):
            codes, absmax = torch.ops.bitsandbytes.quantize_blockwise(x, maps[sign], block)
            quant[f"{sign}_{block}"] = {"x": x, "codes": codes, "absmax": absmax}
    grads = make_grads()
    cases = {name: run_case(cls, kw, grads) for name, (cls, kw) in CASES.items()}
    signatures = {c: str(inspect.signature(getattr(bnb.optim, c))) for c in CLASSES}
    torch.save({"version": bnb.__version__, "maps": maps, "quant": quant, "params": make_params(),
                "grads": grads, "cases": cases, "case_args": {k: (c, kw) for k, (c, kw) in CASES.items()},
                "signatures": signatures, "steps": STEPS, "mid": MID, "record": RECORD}, "bnb.pt")


if __name__ == "__main__":
    main()
