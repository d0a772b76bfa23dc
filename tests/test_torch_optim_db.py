"""The torch drop-ins against torch's own optimizer test database (``optim_db``).

``torch.testing._internal.common_optimizers.optim_db`` lists, for every torch optimizer,
the constructor inputs torch's test suite runs and the bad inputs with the exception
torch raises. Every class ``adapters`` exports under a torch optimizer's name is checked
against its entry (a drop-in added later joins automatically):

* every trajectory input (torch's CPU inputs with the ``fused`` / ``differentiable``
  variants torch's suite adds, a ``foreach=True`` variant, and the inputs torch keeps for
  other devices): torch's optimizer and ours, built with the same kwargs on identical
  params, run ``STEPS`` closure steps in float64 (and float32 for torch's CPU inputs and
  their fused variants); after every step the returned losses and the params, and after
  four of them the full ``state_dict()`` (per-param state keys and values, every
  ``param_groups`` entry torch has, nothing more), must agree (``TOL``). One param gets no
  gradient before step ``LATE`` (torch creates its state lazily). Inputs torch refuses
  must be refused by ours with torch's exception and message; inputs the drop-ins refuse
  by design are listed in ``REFUSED_BY_DESIGN`` and must raise our error. Where torch's
  own paths disagree the reference is listed in ``REFERENCE_FLAGS``.
* every error input: ours raises torch's exception type (or warning) at the same point
  (constructor or step), with a message matching torch's ``error_regex`` (no regex is
  about torch internals: none is exempted).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.testing._internal.common_optimizers import (OptimizerErrorEnum, OptimizerInput,
                                                        _get_optim_inputs_including_global_cliquey_kwargs,
                                                        optim_db)

import adapters

STEPS = 10
LATE = 4  # the "late" param has grad None on steps 0..LATE-1 (fewer in shorter runs)
# max abs difference after scaling: |ours - torch| <= atol + rtol * |torch|
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}

# flags the drop-ins refuse at construction, whatever torch does with them on CPU
REFUSED_BY_DESIGN = {
    "differentiable": "the drop-ins step under no_grad on the functional engine; differentiating "
                      "through steps is done with functional_optim directly (DESIGN.md)",
    "capturable": "CUDA-graph capture is a torch-internal code path the functional engine does not "
                  "have (torch itself needs CUDA params for it)",
}

# param-group keys ours has beyond torch's, by class: none
EXTRA_GROUP_KEYS: dict[str, set[str]] = {}

# the params an optimizer's inputs are meant for: SparseAdam takes sparse gradients
# (embedding tables), Muon 2-D matrices; the rest any dense tensors (incl. a 1-D bias)
MODEL_KIND = {"SparseAdam": "sparse", "Muon": "matrix"}

# an LBFGS step is up to max_iter=20 iterations, so 2 steps are 40 updates; from the
# third step on its default lr=1 without line search overshoots on this loss, which
# amplifies rounding (1e-14 after 2 steps, 2e-9 after 3, between torch's class and ours)
STEPS_FOR = {"LBFGS": 2}


def _steps(name: str) -> tuple[int, int]:
    """(steps, late): the late param gets gradients from step ``late`` on."""
    steps = STEPS_FOR.get(name, STEPS)
    return steps, min(LATE, steps // 2)

# inputs whose numeric reference is torch with other flags (torch's own paths disagree);
# param_groups are still compared with torch's optimizer built from the input itself
REFERENCE_FLAGS: list[tuple[str, Callable[[dict], bool], dict[str, Any], str]] = [
    ("ASGD", lambda kw: bool(kw.get("foreach")), {"foreach": False},
     "torch's foreach ASGD computes eta and mu as float32 tensor arithmetic on the step "
     "tensor, its for-loop in Python doubles; foreach is a speed knob the drop-ins ignore, "
     "so they follow the for-loop (torch's suite compares the two paths to tolerance only)"),
    ("SGD", lambda kw: bool(kw.get("fused")) and kw.get("momentum", 0) != 0, {"fused": False},
     "torch's fused SGD creates momentum buffers only when the first param's is missing, "
     "so a param whose first gradient comes later crashes it (TypeError; see "
     "test_torch_fused_sgd_fails_on_a_late_param); torch's for-loop is the reference"),
]

# state values whose type torch leaves to chance: LBFGS's t is whatever produced it last
# (lr: an int by default, or a tensor; the line search: a float or a 0-d tensor of either
# float dtype); torch only multiplies by it, so ours (always a float of the same value)
# loads back into torch and vice versa
NUMBER_TYPE_FREE = {("LBFGS", "t")}


def _drop_ins() -> list[tuple[Any, type]]:
    out = []
    for info in optim_db:
        cls = getattr(adapters, info.optim_cls.__name__, None)
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
            out.append((info, cls))
    return out


DROP_INS = _drop_ins()
INFO = {info.optim_cls.__name__: (info, cls) for info, cls in DROP_INS}


def _trajectory_inputs(info: Any) -> list[OptimizerInput]:
    """torch's CPU inputs with its fused/differentiable variants, a foreach=True variant
    (torch leaves foreach out on CPU, where it runs too), and the other devices' inputs."""
    out = list(_get_optim_inputs_including_global_cliquey_kwargs("cpu", torch.float64, info))
    base = info.optim_inputs_func(device="cpu")
    if "foreach" in info.supported_impls:
        out += [OptimizerInput(None, {**copy.deepcopy(i.kwargs), "foreach": True}, f"{i.desc} & foreach")
                for i in base]
    seen = {i.desc for i in base}
    for device in ("cuda", "mps"):
        for i in info.optim_inputs_func(device=device):
            if i.desc not in seen:
                seen.add(i.desc)
                out.append(OptimizerInput(None, i.kwargs, f"{i.desc} ({device} input)"))
    return out


def _case_id(name: str, index: int, desc: str) -> str:
    return f"{name}-{index}-" + re.sub(r"[^A-Za-z0-9_.+]+", "_", desc.replace("&", "+")).strip("_")


def _refused(kwargs: dict) -> list[str]:
    return [flag for flag in REFUSED_BY_DESIGN if kwargs.get(flag)]


def _float32_too(inp: OptimizerInput) -> bool:
    """float32 runs where they test something float64 does not, cheaply: not for refused
    inputs (refused whatever the dtype), nor for the foreach and other-device variants (a
    flag the drop-ins ignore, or inputs that only restate CPU ones with tensor values)."""
    return not _refused(inp.kwargs) and not inp.desc.endswith((" & foreach", " input)"))


def _trajectory_cases() -> list[Any]:
    out = []
    for name, (info, _) in INFO.items():
        for i, inp in enumerate(_trajectory_inputs(info)):
            dtypes = [torch.float64, torch.float32] if _float32_too(inp) else [torch.float64]
            for dtype in dtypes:
                out.append(pytest.param(name, i, dtype,
                                        id=f"{_case_id(name, i, inp.desc)}-{str(dtype)[6:]}"))
    return out


TRAJECTORY_CASES = _trajectory_cases()
ERROR_CASES = [pytest.param(name, i, id=_case_id(name, i, e.optimizer_error_input.desc))
               for name, (info, _) in INFO.items()
               for i, e in enumerate(info.optim_error_inputs_func(device="cpu", dtype=torch.float64))]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads only cost (spinning on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the model --------------------------------------------------------------------------

SHAPES = {"dense": [(4, 3), (4,), (2, 4), (2,), (3,)], "matrix": [(4, 3), (2, 4), (3, 3)],
          "sparse": [(6, 3), (5, 2), (4, 2)]}  # the last param is the late one


def _params(kind: str, dtype: torch.dtype) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype))
            for s in SHAPES[kind]]


def _loss(kind: str, params: list[torch.Tensor], step: int, late_step: int) -> torch.Tensor:
    """A small nonlinear loss; the last param enters it from step ``late_step`` on."""
    gen = torch.Generator().manual_seed(100 + step)
    dtype = params[0].dtype
    *used, late = params
    if kind == "sparse":  # embedding lookups: sparse gradients on a few (repeated) rows
        idx = [torch.randint(0, p.shape[0], (4,), generator=gen) for p in params]
        loss = sum(torch.tanh(F.embedding(i, p, sparse=True)).pow(2).sum() * (j + 1)
                   for j, (i, p) in enumerate(zip(idx[:-1], used)))
        if step >= late_step:
            loss = loss + F.embedding(idx[-1], late, sparse=True).pow(2).sum()
        return loss
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64).to(dtype)
    if kind == "matrix":
        w1, w2 = used
        y = torch.tanh(x @ w1.T) @ w2.T
        extra = (late @ late.T).diagonal().sum() * 0.5
    else:
        w1, b1, w2, b2 = used
        y = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        extra = (late - 0.5).pow(2).sum()
    loss = (y - 0.3).pow(2).mean()
    return loss + extra if step >= late_step else loss


def _closure(opt: torch.optim.Optimizer, kind: str, params: list[torch.Tensor], step: int,
             late_step: int) -> Callable[[], torch.Tensor]:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _loss(kind, params, step, late_step)
        loss.backward()
        return loss
    return closure


# -- comparisons ------------------------------------------------------------------------

def _assert_close(ours: Any, theirs: Any, tol: dict[str, float], where: str, type_free: bool = False) -> None:
    """Same type (numbers and 0-d tensors interchangeable if ``type_free``), structure, dtype
    and shape; numbers within ``tol``; the rest equal."""
    if type_free and isinstance(theirs, torch.Tensor) and theirs.dim() == 0:
        theirs = theirs.item()
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor), f"{where}: {type(ours).__name__}, torch has a tensor"
        assert (ours.dtype, ours.shape, ours.layout, ours.device) == (
            theirs.dtype, theirs.shape, theirs.layout, theirs.device), (
            f"{where}: {ours.dtype} {tuple(ours.shape)} {ours.layout} vs torch's "
            f"{theirs.dtype} {tuple(theirs.shape)} {theirs.layout}")
        a, b = ours.detach(), theirs.detach()
        if a.is_sparse:
            a, b = a.to_dense(), b.to_dense()
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{where}: {m}")
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), f"{where}: {ours!r} vs torch's {theirs!r}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _assert_close(a, b, tol, f"{where}[{i}]")
    elif isinstance(theirs, (int, float)) and not isinstance(theirs, bool) and type_free:
        assert isinstance(ours, (int, float)) and math.isclose(ours, theirs, rel_tol=tol["rtol"], abs_tol=tol["atol"]), (
            f"{where}: {ours!r} vs torch's {theirs!r}")
    elif isinstance(theirs, float):
        assert type(ours) is float and math.isclose(ours, theirs, rel_tol=tol["rtol"], abs_tol=tol["atol"]), (
            f"{where}: {ours!r} vs torch's {theirs!r}")
    else:
        assert type(ours) is type(theirs) and ours == theirs, f"{where}: {ours!r} vs torch's {theirs!r}"


def _assert_same_state_dict(name: str, ours: dict, theirs: dict, tol: dict[str, float], where: str) -> None:
    assert sorted(ours["state"]) == sorted(theirs["state"]), f"{where}: state for params {sorted(ours['state'])}, torch {sorted(theirs['state'])}"
    for idx, entry in theirs["state"].items():
        assert sorted(ours["state"][idx]) == sorted(entry), f"{where}: state[{idx}] keys"
        for key, value in entry.items():
            _assert_close(ours["state"][idx][key], value, tol, f"{where}: state[{idx}][{key!r}]",
                          type_free=(name, key) in NUMBER_TYPE_FREE)
    assert len(ours["param_groups"]) == len(theirs["param_groups"])
    for i, (og, tg) in enumerate(zip(ours["param_groups"], theirs["param_groups"])):
        assert set(og) - set(tg) <= EXTRA_GROUP_KEYS.get(name, set()), f"{where}: group {i} extra keys"
        assert set(tg) <= set(og), f"{where}: group {i} lacks {sorted(set(tg) - set(og))}"
        for key, value in tg.items():
            _assert_close(og[key], value, tol, f"{where}: param_groups[{i}][{key!r}]")


# -- trajectories -----------------------------------------------------------------------

def _construct(cls: type, params: list[torch.Tensor], kwargs: dict) -> tuple[Any, BaseException | None]:
    try:
        return cls(params, **copy.deepcopy(kwargs)), None
    except Exception as err:  # noqa: BLE001 - compared with torch's below
        return None, err


def _reference_kwargs(name: str, kwargs: dict) -> dict:
    for cls_name, applies, flags, _ in REFERENCE_FLAGS:
        if cls_name == name and applies(kwargs):
            return {**kwargs, **flags}
    return kwargs


@pytest.mark.parametrize("name,index,dtype", TRAJECTORY_CASES)
def test_trajectory_input(name: str, index: int, dtype: torch.dtype) -> None:
    info, cls = INFO[name]
    kwargs = _trajectory_inputs(info)[index].kwargs
    kind = MODEL_KIND.get(name, "dense")
    refused = _refused(kwargs)
    if refused:
        with pytest.raises(ValueError, match=rf"{refused[0]}=True is not supported by {name}"):
            cls(_params(kind, dtype), **copy.deepcopy(kwargs))
        return
    theirs_params, ours_params = _params(kind, dtype), _params(kind, dtype)
    theirs, their_err = _construct(info.optim_cls, theirs_params, _reference_kwargs(name, kwargs))
    ours, our_err = _construct(cls, ours_params, kwargs)
    if their_err is not None:  # torch refuses this input: so must we, the same way
        assert type(our_err) is type(their_err), f"torch raised {their_err!r}, ours {our_err!r}"
        assert str(our_err) == str(their_err)
        return
    assert our_err is None, f"torch accepts {kwargs}, ours raised {our_err!r}"
    groups = info.optim_cls(_params(kind, dtype), **copy.deepcopy(kwargs)).state_dict()["param_groups"]
    tol = TOL[dtype]

    def check_state_dict(where: str) -> None:
        expected = {**theirs.state_dict(), "param_groups": groups}
        _assert_same_state_dict(name, ours.state_dict(), expected, tol, where)

    check_state_dict("before step 0")
    steps, late = _steps(name)
    for step in range(steps):
        their_loss = theirs.step(_closure(theirs, kind, theirs_params, step, late))
        our_loss = ours.step(_closure(ours, kind, ours_params, step, late))
        where = f"step {step}"
        _assert_close(our_loss, their_loss, tol, f"{where}: loss")
        for i, (p, q) in enumerate(zip(ours_params, theirs_params)):
            _assert_close(p, q, tol, f"{where}: param {i}")
        # the state_dict: after the first step, the last without the late param's state,
        # the first with it, and the last (params and losses: after every step)
        if step in (0, late - 1, late, steps - 1):
            check_state_dict(where)


def test_torch_fused_sgd_fails_on_a_late_param() -> None:
    """The torch bug behind REFERENCE_FLAGS' SGD entry (fails once torch fixes it: then
    drop the entry). Ours steps on."""
    for optim_cls in (torch.optim.SGD, adapters.SGD):
        a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
        opt = optim_cls([a, b], lr=0.1, momentum=0.9, fused=True)
        a.grad = torch.ones(2)
        opt.step()
        b.grad = torch.ones(3)
        if optim_cls is torch.optim.SGD:
            with pytest.raises(TypeError, match="expected Tensor"):
                opt.step()
        else:
            opt.step()
            torch.testing.assert_close(b.detach(), torch.full((3,), 0.9), rtol=0, atol=1e-7)


# -- error inputs -----------------------------------------------------------------------

def _provoke(optim_cls: type, error_input: Any, name: str) -> None:
    """Construct (and for step errors, step) as torch's test suite does."""
    oi = error_input.optimizer_error_input
    if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        optim_cls(oi.params, **oi.kwargs)
        return
    opt = optim_cls(oi.params, **oi.kwargs)
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.rand_like(p)
    opt.step((lambda: torch.zeros(())) if INFO[name][0].step_requires_closure else None)


@pytest.mark.parametrize("name,index", ERROR_CASES)
def test_error_input(name: str, index: int) -> None:
    info, cls = INFO[name]
    for optim_cls in (info.optim_cls, cls):  # torch first: the database matches the installed torch
        error_input = info.optim_error_inputs_func(device="cpu", dtype=torch.float64)[index]
        expected, regex = error_input.error_type, error_input.error_regex
        if error_input.error_on == OptimizerErrorEnum.STEP_ERROR:  # construction must succeed
            oi = error_input.optimizer_error_input
            optim_cls(oi.params, **oi.kwargs)
            error_input = info.optim_error_inputs_func(device="cpu", dtype=torch.float64)[index]
        if issubclass(expected, Warning):
            with pytest.warns(expected, match=regex):
                _provoke(optim_cls, error_input, name)
        else:
            with pytest.raises(expected, match=regex):
                _provoke(optim_cls, error_input, name)
