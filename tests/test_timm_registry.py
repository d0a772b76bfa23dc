"""Every registry name of ``adapters.timm`` through ``create_optimizer_v2``, against timm 1.0.31.

The reference ``tests/reference/timm_registry.pt`` was recorded from real timm by
``tests/reference/generate_timm_registry.py``, which imports this module for the model, the
inputs, the cases and the training loop (so both sides run the same code; timm is never
imported here). For each case, ``create_optimizer_v2(model, opt=name, lr=..., weight_decay=...,
**kwargs)`` builds the optimizer on a small float64 model and runs :data:`STEPS` steps of a real
loss on fixed random inputs:

* the model (:class:`Net`): a Conv2d (4-D weight), a Linear, a LayerNorm (1-D weight and
  bias: with ``filter_bias_and_bn`` the factory makes two param groups, weight decay 0 and
  ``weight_decay``), a 2-D ``proj`` matrix and a free 1-D ``bias`` (starting at zero), and a
  ``group_matcher`` for ``layer_decay``;
* ``proj.grad`` is set to None after backward on steps :data:`NO_GRAD_STEPS`;
* ``group['lr']`` of every group is halved before step :data:`LR_HALVED_AT` (Adafactor with
  ``lr=None`` writes ``group['lr']`` itself each step: recorded as timm behaves);
* second-order names (``adahessian``) call ``loss.backward(create_graph=True)``; timm's and our
  Adahessian draw their Rademacher vectors from their own generator (seed 2147483647).

Every name timm can run on CPU (all of ``list_optimizers()`` but apex's ``fused*`` and
bitsandbytes' ``bnb*``, tested against their own kernels elsewhere) runs with its defaults, most also with
a second set of non-default options (caution, amsgrad, decoupled decay, momentum, nesterov,
trust_clip, always_adapt, factored Adafactor, ...), one with ``layer_decay=0.75``, one with
``filter_bias_and_bn=False``, and three under ``lookahead_``.

Asserted per case: the rebuilt initial params equal the recorded ones; the params at every
checkpoint in :data:`CHECKPOINTS`, and the final ``state_dict`` tensors (same keys, shapes and
dtypes), equal timm's to :data:`TOL` relative (``max|ours - timm| / max|timm|`` per tensor);
the state's scalars (steps, Adafactor's RMS) to the same tolerance; the final param groups
(every hyperparameter, and which params each holds) equal timm's.

Tolerance: 1e-9 relative, float64 (torch's default dtype is float64 during the runs, as
while recording). Measured worst: 2e-14 (``adahessian-default``; most cases <= 6e-15).
Exception: timm's ``RAdamLegacy`` computes in float32 whatever the param dtype (``p.float()``,
float32 moments), ours in the param dtype, so its two cases differ by float32 rounding
(measured 2.5e-7): they are held to 2e-6 (and float32 vs float64 state) by
``test_float32_in_timm_matches_to_float32_rounding`` instead.
"""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "reference", "timm_registry.pt")

TOL = 1e-9  # relative, float64
MEASURED = 2e-14  # the worst relative difference measured over the cases held to TOL (adahessian)
# timm's RAdamLegacy computes in float32 whatever the param dtype: its cases are held to
# float32 rounding (TOL_F32, as tests/test_timm_adam_family.py; measured 2.5e-7)
FLOAT32_IN_TIMM = {'radamlegacy'}
TOL_F32 = 2e-6
STEPS = 24
CHECKPOINTS = (1, 5, 10, 15, 20, 24)  # params recorded after these steps (1-based)
NO_GRAD_STEPS = (3, 4, 5)  # proj.grad = None after backward on these steps
LR_HALVED_AT = 12  # every group's lr is halved before this step
WEIGHT_DECAY = 0.05
BATCH = 4


# -- the model, the inputs, the loss (shared with the generator) --------------------------------

class Net(nn.Module):
    """conv (4-D weight) -> tanh -> fc -> LayerNorm -> tanh -> @ proj + bias."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, kernel_size=2, stride=2)  # weight (2, 2, 2, 2)
        self.fc = nn.Linear(8, 3)
        self.norm = nn.LayerNorm(3)
        self.proj = nn.Parameter(torch.empty(3, 2))  # no grad on NO_GRAD_STEPS
        self.bias = nn.Parameter(torch.empty(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x)).flatten(1)
        h = torch.tanh(self.norm(self.fc(h)))
        return h @ self.proj + self.bias

    def group_matcher(self, coarse=False):
        return dict(stem=r'^conv', blocks=[(r'^fc', (0,)), (r'^norm', (1,))])


def build_model() -> Net:
    """The model with params drawn from a seeded generator (float64); ``bias`` starts at zero
    (the zero-norm branch of the trust ratios), the LayerNorm weight near one."""
    model = Net().double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = 0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if name == 'norm.weight':
                value = 1.0 + 0.2 * value
            elif name == 'bias':
                value = torch.zeros_like(value)
            p.copy_(value)
    return model


def make_inputs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One (x, target) batch per step, from a seeded generator."""
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 2, 4, 4, generator=gen, dtype=torch.float64),
             torch.randn(BATCH, 2, generator=gen, dtype=torch.float64)) for _ in range(STEPS)]


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


# -- the cases ----------------------------------------------------------------------------------

def _case(opt: str, lr, tag: str = 'default', **kwargs) -> tuple[str, dict]:
    return f'{opt}-{tag}', {'opt': opt, 'lr': lr, 'kwargs': kwargs}


CASES: dict[str, dict] = dict([
    # torch.optim's classes (the adapters' drop-ins)
    _case('sgd', 0.05), _case('sgd', 0.05, 'layer_decay', momentum=0.8, layer_decay=0.75),
    _case('momentum', 0.05), _case('momentum', 0.05, 'dampening', momentum=0.5, dampening=0.3),
    _case('nesterov', 0.05), _case('nesterov', 0.05, 'no_filter', filter_bias_and_bn=False),
    _case('adam', 1e-2), _case('adam', 1e-2, 'amsgrad', amsgrad=True, betas=(0.8, 0.99), eps=1e-6),
    _case('adamw', 1e-2), _case('adamw', 1e-2, 'amsgrad', amsgrad=True),
    _case('nadam', 1e-2), _case('nadam', 1e-2, 'decoupled', decoupled_weight_decay=True, momentum_decay=0.01),
    _case('radam', 1e-2), _case('radam', 1e-2, 'decoupled', decoupled_weight_decay=True, betas=(0.8, 0.9)),
    _case('radamw', 1e-2), _case('radamw', 1e-2, 'coupled', decoupled_weight_decay=False, betas=(0.8, 0.9)),
    _case('adamax', 1e-2), _case('adamax', 1e-2, 'betas', betas=(0.8, 0.99), eps=1e-6),
    _case('adadelta', 1.0), _case('adadelta', 1.0, 'rho', rho=0.8, eps=1e-4),
    _case('adagrad', 0.05), _case('adagrad', 0.05, 'lr_decay', lr_decay=0.01, initial_accumulator_value=0.1),
    _case('rmsprop', 1e-3), _case('rmsprop', 1e-3, 'centered', centered=True, momentum=0.0),
    # SGDP / AdamP
    _case('sgdp', 0.05), _case('sgdp', 0.05, 'options', nesterov=False, dampening=0.2, delta=0.5, wd_ratio=0.2,
                               eps=1e-6),
    _case('csgdp', 0.05), _case('csgdp', 0.05, 'classic', nesterov=False, momentum=0.7),
    _case('adamp', 1e-2), _case('adamp', 1e-2, 'options', nesterov=False, delta=0.5, wd_ratio=0.2),
    _case('cadamp', 1e-2), _case('cadamp', 1e-2, 'options', nesterov=False, delta=0.5),
    # AdamWLegacy / NAdamLegacy / RAdamLegacy
    _case('adamwlegacy', 1e-2), _case('adamwlegacy', 1e-2, 'options', amsgrad=True, caution=True,
                                      clipping_threshold=0.5),
    _case('cadamw', 1e-2), _case('cadamw', 1e-2, 'options', amsgrad=True, corrected_weight_decay=True),
    _case('adamc', 1e-2), _case('adamc', 1e-2, 'amsgrad', amsgrad=True, betas=(0.8, 0.95)),
    _case('cadamc', 1e-2), _case('cadamc', 1e-2, 'amsgrad', amsgrad=True),
    _case('nadamlegacy', 1e-2), _case('nadamlegacy', 1e-2, 'options', schedule_decay=0.01, betas=(0.8, 0.99)),
    _case('radamlegacy', 1e-2), _case('radamlegacy', 1e-2, 'options', betas=(0.8, 0.9), eps=1e-6),
    # AdaBelief
    _case('adabelief', 1e-2), _case('adabelief', 1e-2, 'options', amsgrad=True, decoupled_decay=False),
    _case('radabelief', 1e-2), _case('radabelief', 1e-2, 'options', degenerated_to_sgd=False, fixed_decay=True,
                                     betas=(0.8, 0.9)),
    # RMSpropTF
    _case('rmsproptf', 1e-3), _case('rmsproptf', 1e-3, 'options', centered=True, lr_in_momentum=False),
    _case('rmsproptfw', 1e-3), _case('rmsproptfw', 1e-3, 'centered', centered=True, momentum=0.0),
    _case('rmsproptfc', 1e-3), _case('rmsproptfc', 1e-3, 'options', lr_in_momentum=False),
    _case('crmsproptf', 1e-3), _case('crmsproptf', 1e-3, 'options', decoupled_decay=True, momentum=0.5),
    # Lamb
    _case('lamb', 1e-2), _case('lamb', 1e-2, 'options', always_adapt=True, grad_averaging=False,
                               max_grad_norm=None),
    _case('lambc', 1e-2), _case('lambc', 1e-2, 'options', always_adapt=True, bias_correction=False),
    _case('lambw', 1e-2), _case('lambw', 1e-2, 'options', trust_clip=True, max_grad_norm=0.5),
    _case('lambcw', 1e-2), _case('lambcw', 1e-2, 'caution', caution=True),
    _case('lambcd', 1e-2), _case('lambcd', 1e-2, 'trust_clip', trust_clip=True),
    _case('clamb', 1e-2), _case('clamb', 1e-2, 'options', decoupled_decay=True, always_adapt=True),
    _case('clambw', 1e-2), _case('clambw', 1e-2, 'corrected', corrected_weight_decay=True),
    # Lars
    _case('lars', 1.0), _case('lars', 1.0, 'options', momentum=0.5, dampening=0.1, always_adapt=True),
    _case('larc', 1.0), _case('larc', 1.0, 'options', always_adapt=True, trust_coeff=0.01),
    _case('nlars', 1.0), _case('nlars', 1.0, 'options', trust_clip=True, eps=1e-6),
    _case('nlarc', 1.0), _case('nlarc', 1.0, 'always_adapt', always_adapt=True),
    # NvNovoGrad
    _case('novograd', 1e-2), _case('novograd', 1e-2, 'options', grad_averaging=True, amsgrad=True),
    _case('novogradw', 1e-2), _case('novogradw', 1e-2, 'options', amsgrad=True, betas=(0.9, 0.99)),
    _case('novogradc', 1e-2), _case('novogradc', 1e-2, 'grad_averaging', grad_averaging=True),
    # MADGRAD
    _case('madgrad', 1e-2), _case('madgrad', 1e-2, 'options', momentum=0.0, eps=1e-4),
    _case('madgradw', 1e-2), _case('madgradw', 1e-2, 'momentum', momentum=0.5),
    # Adafactor (lr None: relative step)
    _case('adafactor', None), _case('adafactor', 1e-2, 'options', min_dim_size_to_factor=2, betas=(0.9, 0.999),
                                    scale_parameter=False, clip_threshold=0.5),
    _case('adafactor', None, 'warmup', warmup_init=True, min_dim_size_to_factor=1),
    _case('cadafactor', None), _case('cadafactor', 1e-2, 'options', min_dim_size_to_factor=2, eps_scale=1e-2,
                                     decay_rate=-0.6),
    # Adahessian (second order)
    _case('adahessian', 0.05), _case('adahessian', 0.05, 'options', avg_conv_kernel=True, hessian_power=0.5,
                                     update_each=2, n_samples=2),
    # Adan / Adopt / NAdamW / SGDW
    _case('adan', 1e-2), _case('adan', 1e-2, 'options', betas=(0.9, 0.8, 0.95), eps=1e-6),
    _case('adanw', 1e-2), _case('cadan', 1e-2), _case('cadanw', 1e-2),
    _case('adopt', 1e-2), _case('adopt', 1e-2, 'options', clip_exp=None, betas=(0.8, 0.99), maximize=True),
    _case('adoptw', 1e-2), _case('adoptc', 1e-2), _case('cadopt', 1e-2), _case('cadoptw', 1e-2),
    _case('cadoptc', 1e-2),
    _case('nadamw', 1e-2), _case('nadamw', 1e-2, 'options', clipping_threshold=0.5, maximize=True),
    _case('nadamc', 1e-2), _case('cnadamw', 1e-2), _case('cnadamc', 1e-2),
    _case('sgdw', 0.05), _case('sgdw', 0.05, 'options', nesterov=False, dampening=0.2, caution=True),
    _case('sgdc', 0.05), _case('csgdw', 0.05), _case('csgdc', 0.05), _case('nesterovw', 0.05),
    # Lion / LaProp / Mars
    _case('lion', 1e-3), _case('lion', 1e-3, 'options', betas=(0.8, 0.95), maximize=True),
    _case('clion', 1e-3), _case('lionc', 1e-3), _case('clionc', 1e-3),
    _case('laprop', 1e-2), _case('laprop', 1e-2, 'options', betas=(0.8, 0.99), eps=1e-8),
    _case('claprop', 1e-2), _case('lapropc', 1e-2),
    _case('mars', 1e-2), _case('mars', 1e-2, 'lion_1d', mars_type='lion', optimize_1d=True, gamma=0.1),
    _case('mars', 1e-2, 'fallback', lr_1d_factor=0.5, betas_1d=(0.8, 0.9)), _case('cmars', 1e-2),
    # Muon (Newton-Schulz on matrices and convs, AdamW/NAdamW fallback on the rest) / AdafactorBigVision
    _case('muon', 1e-2), _case('muon', 1e-2, 'options', adjust_lr_fn='original', nesterov=True, conv_mode='batched'),
    _case('nmuon', 1e-2), _case('adamuon', 1e-2), _case('nadamuon', 1e-2),
    _case('adafactorbv', 1e-2), _case('adafactorbv', 1e-2, 'options', min_dim_size_to_factor=2, clipping_threshold=0.5,
                                      caution=True),
    _case('adafactorbvc', 1e-2), _case('cadafactorbv', 1e-2), _case('cadafactorbvc', 1e-2),
    # Kron (its probe vectors come from torch's global generator: seeded per case)
    _case('kron', 1e-2), _case('kronw', 1e-2), _case('kronc', 1e-2),
    # Lookahead
    _case('lookahead_adamw', 1e-2), _case('lookahead_lamb', 1e-2), _case('lookahead_madgrad', 1e-2),
])


def is_second_order(opt: str) -> bool:
    return opt.lower().split('_')[-1] == 'adahessian'


# -- the run (shared with the generator) ----------------------------------------------------------

def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else tuple(value.tolist())
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def encode_state(state: dict) -> dict:
    """A state_dict's ``state`` as one float64 vector of its tensor values and a layout
    ``(index, key, kind, shape or value, dtype)`` per entry (kind ``'tensor'`` for tensors
    with dims, ``'scalar_tensor'`` for 0-d tensors, else the Python type's name)."""
    layout, chunks = [], []
    for index in sorted(state):
        for key, value in state[index].items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                layout.append((int(index), key, 'tensor', tuple(value.shape), str(value.dtype)))
                chunks.append(value.detach().reshape(-1).to(torch.float64))
            elif isinstance(value, torch.Tensor):
                layout.append((int(index), key, 'scalar_tensor', value.item(), str(value.dtype)))
            else:
                layout.append((int(index), key, type(value).__name__, value, None))
    values = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.float64)
    return {'layout': layout, 'values': values}


def decode_state(encoded: dict) -> dict:
    """``{(index, key): (kind, tensor or value, dtype)}`` from :func:`encode_state`."""
    out, offset = {}, 0
    for index, key, kind, value, dtype in encoded['layout']:
        if kind == 'tensor':
            n = math.prod(value)
            out[(index, key)] = (kind, encoded['values'][offset:offset + n].reshape(value), dtype)
            offset += n
        else:
            out[(index, key)] = (kind, value, dtype)
    assert offset == encoded['values'].numel()
    return out


def run_case(create_optimizer_v2, case: dict) -> dict:
    """Build the model and ``create_optimizer_v2(model, opt=..., lr=..., weight_decay=..., **kwargs)``,
    train STEPS steps; the initial params, the params at CHECKPOINTS, the final state and param
    groups (hyperparameters, and the param names of each group)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # backward(create_graph=True)'s reference-cycle warning
        model = build_model()
        names = {id(p): n for n, p in model.named_parameters()}
        inputs = make_inputs()
        init = flat_params(model)
        torch.manual_seed(0)  # Kron draws its probe vectors from the global generator
        opt = create_optimizer_v2(model, opt=case['opt'], lr=case['lr'], weight_decay=WEIGHT_DECAY,
                                  **case['kwargs'])
        second_order = is_second_order(case['opt'])
        params = list(model.parameters())
        checkpoints = []
        for step in range(1, STEPS + 1):
            if step == LR_HALVED_AT:
                for group in opt.param_groups:
                    if group['lr'] is not None:
                        group['lr'] = group['lr'] * 0.5
            for p in params:
                p.grad = None
            x, target = inputs[step - 1]
            loss = (model(x) - target).pow(2).mean()
            loss.backward(create_graph=second_order)
            if step in NO_GRAD_STEPS:
                model.proj.grad = None
            opt.step()
            if step in CHECKPOINTS:
                checkpoints.append(flat_params(model))
        for p in params:
            p.grad = None  # free the graphs kept by create_graph
        sd = opt.state_dict()
    return {
        'init': init,
        'params': torch.stack(checkpoints),
        'state': encode_state(sd['state']),
        'param_groups': [{k: _plain(v) for k, v in g.items() if k != 'params'} for g in sd['param_groups']],
        'group_names': [[names[id(p)] for p in g['params']] for g in opt.param_groups],
        'class': type(opt).__name__,
    }


# -- the tests ------------------------------------------------------------------------------------

_REF = torch.load(REFERENCE, weights_only=True) if os.path.exists(REFERENCE) else {'cases': {}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the tensors are tiny: intra-op threads only add overhead (and spin on a loaded machine)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| (absolute where b is all zeros)."""
    scale = b.abs().max().item() or 1.0
    return (a - b).abs().max().item() / scale


def _rel_scalar(a, b) -> float:
    if isinstance(b, (list, tuple)):  # Kron's Q: a list of tensors per param
        assert type(a) is type(b) and len(a) == len(b), (a, b)
        assert all(not isinstance(y, torch.Tensor) or x.shape == y.shape for x, y in zip(a, b))
        return max((_rel(x, y) if isinstance(y, torch.Tensor) else _rel_scalar(x, y) for x, y in zip(a, b)),
                   default=0.0)
    if a is None or b is None or isinstance(b, bool):
        return 0.0 if a == b else math.inf
    return abs(float(a) - float(b)) / (abs(float(b)) or 1.0)


def compare_case(case_id: str, ours: dict, tol: float = TOL, timm_float32: bool = False) -> float:
    """Assert ``ours`` (a :func:`run_case` result) equals the recorded timm run to ``tol``;
    return the worst relative difference (params and state). ``timm_float32``: timm's state
    tensors are float32 where ours are float64 (RAdamLegacy)."""
    ref = _REF['cases'][case_id]
    assert ours['class'] == ref['class']
    assert torch.equal(ours['init'], _REF['init']), "the rebuilt model differs from the recorded one"
    model = build_model()
    shapes = [(n, p.numel()) for n, p in model.named_parameters()]
    worst = 0.0
    for row, step in enumerate(CHECKPOINTS):
        offset = 0
        for name, n in shapes:
            diff = _rel(ours['params'][row, offset:offset + n], ref['params'][row, offset:offset + n])
            assert diff <= tol, f"{name} after step {step}: {diff:.3g} relative"
            worst = max(worst, diff)
            offset += n
    assert not torch.equal(ours['params'][-1], ours['init'])  # the run is not trivial

    mine, theirs = decode_state(ours['state']), decode_state(ref['state'])
    assert set(mine) == set(theirs), f"state keys: {sorted(set(mine) ^ set(theirs))}"
    for entry, (kind, value, dtype) in theirs.items():
        my_kind, my_value, my_dtype = mine[entry]
        assert my_kind == kind, (entry, my_kind, kind)
        if timm_float32 and dtype == 'torch.float32':
            assert my_dtype == 'torch.float64', (entry, my_dtype)
        else:
            assert my_dtype == dtype, (entry, my_dtype, dtype)
        if kind == 'tensor':
            assert my_value.shape == value.shape, (entry, my_value.shape, value.shape)
            diff = _rel(my_value, value)
        else:
            diff = _rel_scalar(my_value, value)
        assert diff <= tol, f"state {entry}: {diff:.3g} relative"
        worst = max(worst, diff)

    assert ours['group_names'] == ref['group_names']
    assert len(ours['param_groups']) == len(ref['param_groups'])
    for i, (mine_g, ref_g) in enumerate(zip(ours['param_groups'], ref['param_groups'])):
        assert set(mine_g) == set(ref_g), f"group {i} keys: {sorted(set(mine_g) ^ set(ref_g))}"
        for key, value in ref_g.items():
            if isinstance(value, float):  # Adafactor's relative-step lr is computed
                assert _rel_scalar(mine_g[key], value) <= tol, (i, key, mine_g[key], value)
            else:
                assert mine_g[key] == value, (i, key, mine_g[key], value)
    return worst


@pytest.mark.parametrize("case_id", [c for c in CASES if CASES[c]['opt'] not in FLOAT32_IN_TIMM])
def test_trajectory_equals_timm(case_id):
    from adapters.timm import create_optimizer_v2
    case = CASES[case_id]
    ref = _REF['cases'][case_id]
    assert (ref['opt'], ref['lr'], ref['kwargs']) == (case['opt'], case['lr'], case['kwargs'])
    compare_case(case_id, run_case(create_optimizer_v2, case))


@pytest.mark.parametrize("case_id", [c for c in CASES if CASES[c]['opt'] in FLOAT32_IN_TIMM])
def test_float32_in_timm_matches_to_float32_rounding(case_id):
    """timm's RAdamLegacy rounds float64 params, grads and moments to float32 every step
    (``p.float()``; float32 state); ours computes in the param dtype (documented in
    ``adapters.timm.RAdamLegacy``). The same run, to float32 rounding, state float64 here."""
    from adapters.timm import create_optimizer_v2
    compare_case(case_id, run_case(create_optimizer_v2, CASES[case_id]), tol=TOL_F32, timm_float32=True)


def test_cases_cover_every_available_name():
    from adapters.timm import list_optimizers
    names = list_optimizers()
    assert len(names) == 101  # all of timm 1.0.31's names
    assert set(_REF['cases']) == set(CASES)
    defaults = {c['opt'] for c in CASES.values() if not c['kwargs']}
    # apex's fused* need CUDA in timm: checked against apex's kernels in tests/test_apex_fused.py;
    # bitsandbytes' bnb* too: checked against its CPU kernels in tests/test_bnb.py
    assert {n for n in names if not n.startswith(('fused', 'bnb'))} <= defaults
    assert sum(c['opt'].startswith('lookahead_') for c in CASES.values()) == 3
    # two param groups (no decay for 1-D params / decay), more with layer decay, one without filter
    for case_id, ref in _REF['cases'].items():
        kwargs = CASES[case_id]['kwargs']
        if 'layer_decay' in kwargs:
            assert len(ref['group_names']) > 2
        elif kwargs.get('filter_bias_and_bn') is False:
            assert len(ref['group_names']) == 1
        else:
            assert [g['weight_decay'] for g in ref['param_groups']] == [0.0, WEIGHT_DECAY], case_id
