"""The cases of ``tests/test_distributed.py``, run inside 2 spawned processes (gloo, CPU).

Each case builds the same tiny float64 setup twice, once stepped by one of our optimizers
and once by ``torch.optim.AdamW`` (the reference, under the same distributed wrapper),
and returns named measurements (relative errors); ``tests/test_distributed.py`` asserts
them against its tolerances. :func:`worker` runs every case on one rank and writes the
results to ``<outdir>/rank<r>.json``.
"""

from __future__ import annotations

import copy
import json
import os
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.nn.parallel import DistributedDataParallel as DDP

import adapters
import functional_optim as fo

LR, WD, MAX_NORM = 0.05, 0.1, 1.0
STEPS = 3


# -- setups -------------------------------------------------------------------------

def mlp() -> torch.nn.Sequential:
    """The same tiny MLP on every rank (seeded)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))


def batch(step: int, same_on_ranks: bool = False) -> torch.Tensor:
    """Step ``step``'s inputs: different per rank (data parallel) unless ``same_on_ranks``
    (tensor parallel: every rank sees the whole batch). Scaled so the clip engages."""
    seed = 100 * step + (0 if same_on_ranks else dist.get_rank())
    return 3.0 * torch.randn(5, 4, generator=torch.Generator().manual_seed(seed))


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def rel_err(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """max |got - want| / max |want| over the full (gathered) tensors."""
    got, want = [full(t.detach()) for t in got], [full(t.detach()) for t in want]
    scale = max(float(w.abs().max()) for w in want)
    return max(float((a - b).abs().max()) for a, b in zip(got, want)) / scale


def ours(kind: str, params: Any, compile: bool) -> torch.optim.Optimizer:
    """``adapters.AdamW`` or the clip-then-AdamW chain as a ``FunctionalOptimizer``."""
    if kind == "adamw":
        return adapters.AdamW(params, lr=LR, weight_decay=WD, compile=compile)
    tx = fo.chain(fo.clip_by_global_norm(MAX_NORM), fo.adamw(lr=LR, weight_decay=WD))
    return adapters.FunctionalOptimizer(params, tx, compile=compile)


def reference_clip(params: list[torch.Tensor]) -> float:
    """The clip of the reference run: the norm of the full gradient as
    ``torch.nn.utils.clip_grad_norm_`` computes it (with an infinite ``max_norm`` it leaves
    the grads as they are), then ``min(1, max_norm / norm)`` (``fo.clip_by_global_norm``'s
    rule: torch adds 1e-6 to the norm, a 1e-6 relative difference in the factor)."""
    norm = float(full(torch.nn.utils.clip_grad_norm_(params, float("inf"))))
    factor = min(1.0, MAX_NORM / norm)
    for p in params:
        p.grad.mul_(factor)
    return norm


def global_norm_state(opt: torch.optim.Optimizer) -> float:
    """The clip's recorded norm (group-wide state, in every param's state_dict entry)."""
    entry = opt.state_dict()["state"][0]
    return float(full(entry["ClipByGlobalNormState.global_norm"]))


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, kind: str, steps: range,
          ref: bool, same_on_ranks: bool = False) -> list[float]:
    """``steps`` steps of a squared loss; returns the clip's norms (reference: torch's,
    ours: the one our optimizer recorded)."""
    norms = []
    for step in steps:
        opt.zero_grad()
        model(batch(step, same_on_ranks)).square().sum().backward()
        if kind == "clip" and ref:
            norms.append(reference_clip([p for p in model.parameters()]))
        opt.step()
        if kind == "clip" and not ref:
            norms.append(global_norm_state(opt))
    return norms


def compare(make: Callable[[], torch.nn.Module], kind: str, compile: bool,
            same_on_ranks: bool = False) -> dict[str, float]:
    """Our optimizer against torch's AdamW on two copies of the same setup."""
    model, ref_model = make(), make()
    opt = ours(kind, model.parameters(), compile)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=LR, weight_decay=WD)
    our_norms = train(model, opt, kind, range(STEPS), False, same_on_ranks)
    ref_norms = train(ref_model, ref_opt, kind, range(STEPS), True, same_on_ranks)
    out = {"params": rel_err(list(model.parameters()), list(ref_model.parameters()))}
    if kind == "clip":
        out["norm"] = max(abs(a - b) / b for a, b in zip(our_norms, ref_norms))
        out["clipped"] = float(min(ref_norms) > MAX_NORM)  # the clip engaged at every step
    return out


def ddp_model() -> torch.nn.Module:
    """The MLP under DDP (plain tensors: ``compile=True`` packs them into flat buffers)."""
    return DDP(mlp())


def fsdp_model() -> torch.nn.Module:
    """The MLP under FSDP2, per layer and at the root: params and grads are Shard(0) DTensors."""
    model = mlp()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def dtensor_model() -> torch.nn.Module:
    """The MLP with its params made DTensors directly: sharded weights, replicated biases."""
    model = mlp()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    placements = {"0.weight": Shard(0), "0.bias": Replicate(), "2.weight": Shard(1), "2.bias": Replicate()}
    for name, p in list(model.named_parameters()):
        module, attr = model.get_submodule(name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1]
        setattr(module, attr, torch.nn.Parameter(distribute_tensor(p.detach(), mesh, [placements[name]])))

    class Full(torch.nn.Module):  # the forward on full tensors; the grads come back as DTensors
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            h = torch.tanh(torch.nn.functional.linear(x, gathered(self.inner[0].weight),
                                                      gathered(self.inner[0].bias)))
            return torch.nn.functional.linear(h, gathered(self.inner[2].weight), gathered(self.inner[2].bias))

    return Full(model)


def gathered(p: DTensor) -> torch.Tensor:
    """``p``'s full value as a plain tensor; its gradient flows back into ``p``'s placement."""
    return p.redistribute(placements=[Replicate()]).to_local()


def _state_dict_copy(opt: torch.optim.Optimizer) -> dict[str, Any]:
    return copy.deepcopy(opt.state_dict())


def dtensor_state_dict_cases() -> dict[str, float]:
    """Loading a clip chain's state_dict into DTensor params after 2 of 4 steps (eager),
    against the uninterrupted run: the DTensor run's own state_dict (its recorded norm is
    a replicated DTensor, the fresh state's a plain tensor) and the state_dict of an
    unsharded run on plain tensors (split like the params on load)."""
    def chain(params):
        return ours("clip", params, compile=False)

    model = dtensor_model()
    opt = chain(model.parameters())
    train(model, opt, "clip", range(2), False, same_on_ranks=True)
    saved = {"dtensor": _state_dict_copy(opt)}
    at_two = [p.detach().clone() for p in model.parameters()]
    train(model, opt, "clip", range(2, 4), False, same_on_ranks=True)
    plain = mlp()
    plain_opt = chain(plain.parameters())
    train(plain, plain_opt, "clip", range(2), False, same_on_ranks=True)
    saved["plain"] = _state_dict_copy(plain_opt)
    out = {}
    for name, state_dict in saved.items():
        resumed = dtensor_model()
        with torch.no_grad():
            for p, value in zip(resumed.parameters(), at_two):
                p.copy_(value)
        resumed_opt = chain(resumed.parameters())
        resumed_opt.load_state_dict(state_dict)
        train(resumed, resumed_opt, "clip", range(2, 4), False, same_on_ranks=True)
        out[f"from_{name}"] = rel_err(list(resumed.parameters()), list(model.parameters()))
    return out


def tp_model() -> torch.nn.Module:
    """The MLP tensor-parallel: the first Linear split by output, the second by input."""
    model = mlp()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    return parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})


# -- distributed checkpoints -----------------------------------------------------------

def _torch_adamw(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=LR, weight_decay=WD)


def _our_adamw(params: Any) -> torch.optim.Optimizer:
    return adapters.AdamW(params, lr=LR, weight_decay=WD)


def _save(model: torch.nn.Module, opt: torch.optim.Optimizer, path: str) -> None:
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=path)


def _resume(make_opt: Callable, path: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = fsdp_model()
    opt = make_opt(model.parameters())
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    return model, opt


def checkpoint_cases(tmp: str) -> dict[str, dict[str, float]]:
    """FSDP2 runs of 2 + 2 steps: uninterrupted, and resumed from a DCP checkpoint taken
    after 2 steps by the same optimizer class or by the other one (torch's <-> ours)."""
    makers = {"ours": _our_adamw, "torch": _torch_adamw}
    finals, paths = {}, {}
    for name, make_opt in makers.items():
        model = fsdp_model()
        opt = make_opt(model.parameters())
        train(model, opt, "adamw", range(2), ref=name == "torch")
        paths[name] = os.path.join(tmp, f"ckpt_{name}")
        _save(model, opt, paths[name])
        train(model, opt, "adamw", range(2, 4), ref=name == "torch")
        finals[name] = list(model.parameters())
    out = {}
    for saved in makers:
        for loader, make_opt in makers.items():
            model, opt = _resume(make_opt, paths[saved])
            train(model, opt, "adamw", range(2, 4), ref=loader == "torch")
            # against the uninterrupted run of the loading class (same from step 2 on)
            out[f"{saved}_into_{loader}"] = rel_err(list(model.parameters()), finals[loader])
    return out


# -- ZeroRedundancyOptimizer -------------------------------------------------------------

def _zero(model: torch.nn.Module, cls: type) -> ZeroRedundancyOptimizer:
    return ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, lr=LR, weight_decay=WD)


def _consolidated(opt: ZeroRedundancyOptimizer) -> dict[str, Any]:
    """The full state_dict gathered on rank 0, then given to every rank."""
    opt.consolidate_state_dict(to=0)
    # a copy, as a saved checkpoint is: torch's state_dict holds the live state tensors
    box = [copy.deepcopy(opt.state_dict()) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _state_err(ours_sd: dict[str, Any], ref_sd: dict[str, Any]) -> float:
    """Largest relative difference between two state_dicts' per-param tensors (same keys)."""
    if sorted(ours_sd["state"]) != sorted(ref_sd["state"]):
        return float("inf")
    worst = 0.0
    for i, ref_entry in ref_sd["state"].items():
        entry = ours_sd["state"][i]
        if sorted(entry) != sorted(ref_entry):
            return float("inf")
        for key, ref_value in ref_entry.items():
            worst = max(worst, rel_err([torch.as_tensor(entry[key])], [torch.as_tensor(ref_value)]))
    return worst


def zero_cases() -> dict[str, float]:
    """ZeRO over DDP with ``adapters.AdamW`` as the local optimizer against ZeRO with
    ``torch.optim.AdamW``: the trajectory, the consolidated state_dict, and resuming from
    a consolidated state_dict (ours, and torch's loaded into ours)."""
    model, ref_model = ddp_model(), ddp_model()
    opt, ref_opt = _zero(model, adapters.AdamW), _zero(ref_model, torch.optim.AdamW)
    train(model, opt, "adamw", range(STEPS), False)
    train(ref_model, ref_opt, "adamw", range(STEPS), True)
    out = {"params": rel_err(list(model.parameters()), list(ref_model.parameters()))}
    sd, ref_sd = _consolidated(opt), _consolidated(ref_opt)
    out["state_dict"] = _state_err(sd, ref_sd)
    train(ref_model, ref_opt, "adamw", range(STEPS, STEPS + 2), True)
    for name, saved in (("ours", sd), ("torch", ref_sd)):
        resumed = ddp_model()
        with torch.no_grad():
            for p, q in zip(resumed.parameters(), model.parameters()):
                p.copy_(q)
        resumed_opt = _zero(resumed, adapters.AdamW)
        resumed_opt.load_state_dict(saved)
        train(resumed, resumed_opt, "adamw", range(STEPS, STEPS + 2), False)
        out[f"resume_{name}"] = rel_err(list(resumed.parameters()), list(ref_model.parameters()))
    return out


# -- the worker ------------------------------------------------------------------------

SETUPS = {"ddp": (ddp_model, False), "fsdp2": (fsdp_model, False), "dtensor": (dtensor_model, False),
          "tp": (tp_model, True)}  # name: (model builder, whether every rank sees the same batch)
KINDS = ("adamw", "clip")
ENGINES = ("eager", "compiled")


def comparisons() -> list[tuple[str, str, str]]:
    """(setup, kind, engine) of every comparison with torch that runs."""
    return [(setup, kind, engine) for setup in SETUPS for kind in KINDS for engine in ENGINES]


def cases(tmp: str) -> dict[str, Callable[[], dict[str, float]]]:
    """Every case by name (a name per setup, optimizer and engine)."""
    out: dict[str, Callable[[], dict[str, float]]] = {}
    for setup, kind, engine in comparisons():
        make, same = SETUPS[setup]
        out[f"{setup}_{kind}_{engine}"] = (lambda make=make, kind=kind, compile=engine == "compiled", same=same:
                                           compare(make, kind, compile, same))
    out["dtensor_state_dict"] = dtensor_state_dict_cases
    out["checkpoint"] = lambda: checkpoint_cases(tmp)
    out["zero"] = zero_cases
    return out


def worker(rank: int, world: int, port: int, outdir: str) -> None:
    """Run every case on this rank; write ``{case: {"error": str|None, "values": {...}}}``."""
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    results: dict[str, Any] = {}
    path = os.path.join(outdir, f"rank{rank}.json")
    try:
        for name, case in cases(outdir).items():
            start = time.perf_counter()
            try:
                results[name] = {"error": None, "values": case()}
            except Exception:
                results[name] = {"error": traceback.format_exc(), "values": {}}
            results[name]["seconds"] = time.perf_counter() - start
            with open(path, "w") as f:  # after every case: a hang later keeps what ran
                json.dump(results, f)
    finally:
        dist.destroy_process_group()
