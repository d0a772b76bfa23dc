"""Our optimizers under torch.distributed, as torch.optim runs there (2 CPU processes, gloo).

One spawn of 2 processes runs every case of ``tests/distributed_cases.py`` (DDP, FSDP2,
DTensor params, tensor parallel, DCP checkpoints, ZeroRedundancyOptimizer), each case
comparing ``adapters.AdamW`` or a clip-then-AdamW ``FunctionalOptimizer`` with
``torch.optim.AdamW`` under the same wrapper in float64; the tests below assert what the
processes measured. Errors are relative to the largest reference value, on the full
(gathered) tensors.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import pytest
import torch.multiprocessing as mp

import distributed_cases

WORLD = 2
TIMEOUT = 600  # seconds for the whole spawn (a hung collective fails the tests, not the suite)
RUNS = distributed_cases.comparisons()  # (setup, kind, engine)
PARAM_TOL = 1e-10  # float64, as the numerics contract asks
NORM_TOL = 1e-12  # the clip's recorded norm against torch's norm of the full gradient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Every case's result on each rank (one spawn for the module)."""
    outdir = str(tmp_path_factory.mktemp("distributed"))
    ctx = mp.get_context("spawn")  # children inherit the environment (TORCHINDUCTOR_CACHE_DIR)
    port = _free_port()
    procs = [ctx.Process(target=distributed_cases.worker, args=(rank, WORLD, port, outdir))
             for rank in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    out = []
    for rank in range(WORLD):
        path = os.path.join(outdir, f"rank{rank}.json")
        out.append(json.load(open(path)) if os.path.exists(path) else {})
    return out


def _values(results: list[dict[str, Any]], name: str) -> dict[str, float]:
    """A case's measurements (the worst over ranks); fails with the case's traceback."""
    per_rank = [r.get(name) for r in results]
    assert all(r is not None for r in per_rank), f"case {name} did not run on every rank"
    for rank, r in enumerate(per_rank):
        assert r["error"] is None, f"rank {rank}:\n{r['error']}"
    return {key: max(r["values"][key] for r in per_rank) for key in per_rank[0]["values"]}


@pytest.mark.parametrize("setup, engine", [(s, e) for s, kind, e in RUNS if kind == "adamw"])
def test_adamw_matches_torch(results, setup, engine):
    """adapters.AdamW against torch.optim.AdamW over 3 steps under DDP, FSDP2 (DTensor
    shards), DTensor params (Shard(0), Shard(1), Replicate) and tensor parallel
    (compile off and on for every setup and optimizer)."""
    values = _values(results, f"{setup}_adamw_{engine}")
    assert values["params"] <= PARAM_TOL


@pytest.mark.parametrize("setup, engine", [(s, e) for s, kind, e in RUNS if kind == "clip"])
def test_clip_chain_clips_by_the_full_gradient_norm(results, setup, engine):
    """chain(clip_by_global_norm, adamw) against torch's clip_grad_norm_ norm + AdamW: the
    clip engaged at every step, its recorded norm is the full gradient's (all shards), and
    the params match."""
    values = _values(results, f"{setup}_clip_{engine}")
    assert values["clipped"] == 1.0
    assert values["norm"] <= NORM_TOL
    assert values["params"] <= PARAM_TOL


def test_state_dict_loads_into_dtensor_params(results):
    """A clip chain on DTensor params resumed after 2 of 4 eager steps follows the
    uninterrupted run, from its own state_dict (the recorded norm a DTensor) and from an
    unsharded run's (plain tensors, split like the params on load)."""
    values = _values(results, "dtensor_state_dict")
    assert values["from_dtensor"] <= PARAM_TOL
    assert values["from_plain"] <= PARAM_TOL


def test_dcp_resume_equals_uninterrupted_run(results):
    """FSDP2 + DCP (get/set_optimizer_state_dict, dcp.save/load) after 2 of 4 steps: the
    resumed run is bit-identical to the uninterrupted one (ours, and torch's as a control)."""
    values = _values(results, "checkpoint")
    assert values["ours_into_ours"] == 0.0
    assert values["torch_into_torch"] == 0.0


def test_dcp_checkpoints_load_across_torch_and_dropin(results):
    """A torch.optim.AdamW DCP checkpoint resumed by adapters.AdamW follows torch's
    uninterrupted run, and ours resumed by torch follows ours."""
    values = _values(results, "checkpoint")
    assert values["torch_into_ours"] <= PARAM_TOL
    assert values["ours_into_torch"] <= PARAM_TOL


def test_zero_redundancy_optimizer_matches_torch(results):
    """ZeroRedundancyOptimizer(optimizer_class=adapters.AdamW) over DDP against the same
    with torch.optim.AdamW: params after 3 steps, and the consolidated state_dict (same
    keys, values within the tolerance)."""
    values = _values(results, "zero")
    assert values["params"] <= PARAM_TOL
    assert values["state_dict"] <= PARAM_TOL


def test_zero_redundancy_optimizer_load_state_dict(results):
    """A consolidated ZeRO state_dict (ours, and torch's) loaded by a fresh ZeRO over
    adapters.AdamW continues as torch's ZeRO does for 2 more steps."""
    values = _values(results, "zero")
    assert values["resume_ours"] <= PARAM_TOL
    assert values["resume_torch"] <= PARAM_TOL
