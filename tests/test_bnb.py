"""``adapters.bnb`` (bitsandbytes.optim's ten classes timm registers) against bitsandbytes
0.50.2's own trajectories on its CPU backend (``reference/bnb.pt``, recorded by
``reference/generate_bnb.py``; bitsandbytes is never imported here).

bitsandbytes computes in float32 whatever the params: the tolerances are float32's. The
8-bit state is compared exactly: with CPU params the classes round as bitsandbytes' CPU
kernels do (``rounding="cpu_lut"``), and every code equals bitsandbytes'.
"""

from __future__ import annotations

import inspect
import os

import pytest
import torch

import adapters.bnb as ab
from adapters import timm

HERE = os.path.dirname(os.path.abspath(__file__))
REF = torch.load(os.path.join(HERE, "reference", "bnb.pt"), weights_only=True)
QUANT = "__bnb_optimizer_quant_state__"
NAMES = {"bnbsgd": "SGD", "bnbsgd8bit": "SGD8bit", "bnbadam": "Adam", "bnbadam8bit": "Adam8bit",
         "bnbadamw": "AdamW", "bnbadamw8bit": "AdamW8bit", "bnblion": "Lion", "bnblion8bit": "Lion8bit",
         "bnbademamix": "AdEMAMix", "bnbademamix8bit": "AdEMAMix8bit"}


@pytest.mark.parametrize("name", sorted(REF["signatures"]))
def test_signature_equals_bitsandbytes(name):
    assert str(inspect.signature(getattr(ab, name))) == REF["signatures"][name]


def _params(values):
    return [torch.nn.Parameter(v.clone()) for v in values]


def _run(opt, params, grads):
    """Step through ``grads``; the flat params after each step."""
    rows = []
    for g in grads:
        for p, x in zip(params, g.values()):
            p.grad = x.clone()
        opt.step()
        rows.append(torch.cat([p.detach().reshape(-1) for p in params]))
    return rows


def _close_state(ours: dict, ref: dict) -> None:
    assert ours["step"] == ref["step"] and ours.keys() == ref.keys()
    q, r = ours[QUANT], ref[QUANT]
    assert q.keys() == r.keys()
    for key in r:
        assert q[key].dtype == r[key].dtype and q[key].shape == r[key].shape, key
        if r[key].dtype == torch.uint8 or key.startswith("qmap"):
            assert torch.equal(q[key], r[key]), key  # codes and maps: bit for bit
        else:  # float32 moments and absmax (measured: <= 4.6e-7 relative to the largest)
            assert (q[key] - r[key]).abs().max() <= 2e-6 * r[key].abs().max(), key


@pytest.mark.parametrize("case", sorted(REF["cases"]))
def test_trajectory_and_state_match_bitsandbytes(case):
    cls, kwargs = REF["case_args"][case]
    ref = REF["cases"][case]
    params = _params(REF["params"].values())
    opt = getattr(ab, cls)(params, **kwargs)
    rows = _run(opt, params, REF["grads"])
    ours = torch.stack([rows[t - 1] for t in REF["record"]])
    # float32: measured <= 8.9e-7 relative to max(1, |p|) (SGD's params reach ~230)
    torch.testing.assert_close(ours, ref["traj"], rtol=1e-6, atol=2e-6)
    sd = opt.state_dict()
    assert sd["param_groups"][0].keys() == ref["state"]["param_groups"][0].keys()
    for key, value in ref["state"]["param_groups"][0].items():
        assert key == "params" or sd["param_groups"][0][key] == value, key
    for i in ref["state"]["state"]:
        _close_state(sd["state"][i], ref["state"]["state"][i])


@pytest.mark.parametrize("case", ["adam_wd", "adam8bit_wd", "sgd8bit_momentum", "lion8bit_wd",
                                  "ademamix8bit_scheduled"])
def test_resumes_from_a_bitsandbytes_checkpoint(case):
    cls, kwargs = REF["case_args"][case]
    ref = REF["cases"][case]
    mid, steps = REF["mid"], REF["steps"]
    row = ref["traj"][list(REF["record"]).index(mid)]
    shapes = [v.shape for v in REF["params"].values()]
    values = torch.split(row, [s.numel() for s in shapes])
    params = _params(v.reshape(s) for v, s in zip(values, shapes))
    opt = getattr(ab, cls)(params, **kwargs)
    opt.load_state_dict(ref["mid"])
    rows = _run(opt, params, REF["grads"][mid:steps])
    torch.testing.assert_close(rows[-1], ref["traj"][-1], rtol=1e-6, atol=2e-6)
    for i in ref["state"]["state"]:
        _close_state(opt.state_dict()["state"][i], ref["state"]["state"][i])


def test_every_bitsandbytes_registry_name_builds_and_steps_on_cpu():
    model = torch.nn.Sequential(torch.nn.Linear(80, 64), torch.nn.Linear(64, 2))
    x = torch.randn(4, 80)
    assert timm.list_optimizers("bnb*") == sorted(NAMES)
    for name, cls in NAMES.items():
        opt = timm.create_optimizer_v2(model, name, lr=1e-3, weight_decay=0.01)
        assert type(opt) is getattr(ab, cls)
        model.zero_grad()
        model(x).square().sum().backward()
        before = model[0].weight.detach().clone()
        opt.step()
        assert not torch.equal(model[0].weight, before)
        state1 = opt.state[model[0].weight]["state1"]  # 5120 elements
        assert state1.dtype == (torch.uint8 if cls.endswith("8bit") else torch.float32)
        assert opt.state[model[0].bias]["state1"].dtype == torch.float32  # 64 elements
    group = timm.create_optimizer_v2(model, "bnbsgd", lr=0.1).param_groups[0]
    assert group["betas"] == (0.9, 0) and group["eps"] == 0.0  # timm binds nesterov=True: ignored


def test_bitsandbytes_checks_and_messages():
    w = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(NotImplementedError, match="SGD without momentum is not supported!"):
        ab.SGD(w, lr=0.1)
    with pytest.raises(ValueError, match="Adam8bit does not support amsgrad=True"):
        ab.Adam8bit(w, amsgrad=True)
    with pytest.raises(ValueError, match="AdamW8bit only supports optim_bits=32"):
        ab.AdamW8bit(w, optim_bits=8)
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        ab.Adam(w, lr=-1)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 1.0"):
        ab.AdEMAMix(w, betas=(0.9, 1.0, 0.99))
    with pytest.raises(ValueError, match="Invalid epsilon value: -0.1"):
        ab.AdamW(w, eps=-0.1)
    with pytest.raises(ValueError, match="Invalid weight_decay value: -1"):
        ab.Lion(w, weight_decay=-1)
    with pytest.raises(NotImplementedError, match="Amount of optimizer bits not supported: 16"):
        ab.Adam(w, optim_bits=16)
