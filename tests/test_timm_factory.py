"""``adapters.timm``'s factory, registry, param groups and Lookahead against timm 1.0.31.

The reference ``tests/reference/timm_factory.pt`` was recorded from real timm by
``tests/reference/generate_timm_factory.py`` (the models below are shared with it; timm is
never imported here). It holds: the functions' signatures; every registry name's
``OptimInfo`` and ``get_optimizer_class`` result; ``list_optimizers`` for several
filters; param groups (param names, ``weight_decay``, ``lr_scale``, ...) from
``param_groups_weight_decay``/``param_groups_layer_decay``; ``create_optimizer_v2`` and
``create_optimizer`` outcomes (class, per-group hyperparameters and param names, or the
error raised) over many opt strings and options; and float64 trajectories of
``'lookahead_adamw'`` and ``'lookahead_momentum'`` (params after every step, the final
state_dict, and one step after loading it).

Names whose class is written by other modules of this package (``adapters.timm._<module>``)
are checked the same way; those checks fail until that module exists. Names timm has whose
class this package does not implement yet must be refused with timm's "not found"
ValueError text.
"""

from __future__ import annotations

import inspect
import logging
import os
import pickle
from dataclasses import fields
from types import SimpleNamespace

import pytest
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "reference", "timm_factory.pt")
TOL = 1e-13  # relative, float64 trajectories (measured <= 1e-16: our AdamW's eager step may run
# torch's fused kernel, which can round differently from timm's single-tensor loop by an ulp)

TORCH_CLASSES = {"SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adamax", "Adadelta", "Adagrad", "RMSprop"}


# -- models (shared with the generator) ---------------------------------------------------

class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)


class MatcherNet(nn.Module):
    """A small ViT-like model with ``no_weight_decay()`` (names and a glob) and a dict
    ``group_matcher`` (regex groups and a MATCH_PREV_GROUP suffix), a 4-D conv weight,
    1-D biases and norms, and a frozen param."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.stem = nn.Conv2d(2, 4, kernel_size=2, stride=2)
        self.blocks = nn.Sequential(*[Block(4) for _ in range(3)])
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)
        self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)

    def no_weight_decay(self):
        return {'pos_embed', 'cls_token', 'blocks.1.fc.*'}

    def group_matcher(self, coarse=False):
        return dict(stem=r'^cls_token|^pos_embed|^stem',
                    blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])


class FnMatcherNet(MatcherNet):
    """As MatcherNet, with a function ``group_matcher`` (ordinals as ints)."""

    def group_matcher(self, coarse=False):
        def ordinal(name):
            if name.startswith('blocks.'):
                return int(name.split('.')[1]) + 1
            if name.startswith('head'):
                return 10
            return 0
        return ordinal


class AutoNet(nn.Module):
    """No group_matcher: layer ids from ``pretrained_cfg['classifier']`` (20 trunk params:
    two ids of 12 and 8, head the third)."""

    def __init__(self):
        super().__init__()
        self.pretrained_cfg = {'classifier': 'head'}
        self.body = nn.Sequential(*[nn.Linear(3, 3) for _ in range(10)])
        self.head = nn.Linear(3, 2)


class PlainNet(nn.Module):
    """Neither group_matcher nor pretrained_cfg: layer decay puts everything in one layer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 1, bias=False)


MODELS = {"matcher": MatcherNet, "fn_matcher": FnMatcherNet, "auto": AutoNet, "plain": PlainNet}


def build_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[name]().double()


def head_lr_groups(model):
    """A ``param_group_fn``: the head with its own lr, the rest."""
    head = [p for n, p in model.named_parameters() if n.startswith('head')]
    rest = [p for n, p in model.named_parameters() if not n.startswith('head') and p.requires_grad]
    return [{'params': head, 'lr': 0.1}, {'params': rest}]


PARAM_GROUP_FNS = {"head_lr": head_lr_groups}


def as_params(model: nn.Module, how: str):
    """``model_or_params`` for a case: the module, its params, or two plain groups."""
    if how == "module":
        return model
    trainable = [p for p in model.parameters() if p.requires_grad]
    if how == "params":
        return trainable
    return [{'params': trainable[:2], 'weight_decay': 0.0}, {'params': trainable[2:]}]


def describe_groups(groups, model: nn.Module) -> list[dict]:
    """Param groups with params as names (hyperparameters as given)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for g in groups:
        entry = {key: _plain(v) for key, v in g.items() if key != 'params'}
        entry['params'] = [names[id(p)] for p in g['params']]
        out.append(entry)
    return out


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def describe_optimizer(opt, model: nn.Module) -> dict:
    """The class (and the base's under Lookahead) and the per-group hyperparameters."""
    base = getattr(opt, '_base_optimizer', None)
    return {'class': type(opt).__name__, 'base_class': None if base is None else type(base).__name__,
            'groups': describe_groups(opt.param_groups, model),
            'requires_grad': [p.requires_grad for p in model.parameters()]}


def flatten(values: dict, model: nn.Module) -> torch.Tensor:
    """One float64 vector of ``values[name]`` over ``model.named_parameters()`` (zeros
    where a name is missing), for a compact reference file."""
    return torch.cat([values[n].reshape(-1) if n in values else torch.zeros(p.numel(), dtype=torch.float64)
                      for n, p in model.named_parameters()])


def unflatten(flat: torch.Tensor, model: nn.Module, present: torch.Tensor | None = None) -> dict:
    """The inverse of :func:`flatten`; names whose ``present`` flag is False are left out."""
    out, offset = {}, 0
    for i, (n, p) in enumerate(model.named_parameters()):
        if present is None or bool(present[i]):
            out[n] = flat[offset:offset + p.numel()].reshape(p.shape).clone()
        offset += p.numel()
    return out


def field_list(cls) -> list[tuple[str, str]]:
    """A dataclass's fields as (name, repr(default)), 'MISSING' for required ones."""
    from dataclasses import MISSING
    return [(f.name, 'MISSING' if f.default is MISSING else repr(f.default)) for f in fields(cls)]


def signature_of(obj) -> list[tuple[str, str, str]]:
    """(name, kind, repr(default)) per parameter: compared instead of the full text, whose
    annotations are spelled differently here."""
    sig = inspect.signature(obj)
    return [(p.name, p.kind.name, repr(p.default)) for p in sig.parameters.values()]


# -- tests --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ref():
    return torch.load(REFERENCE, weights_only=True)


@pytest.fixture(scope="module")
def timm():
    import adapters.timm
    return adapters.timm


def _names(ref, *, torch_only: bool = False) -> list[str]:
    return [name for name, info in ref['registry'].items()
            if not torch_only or _is_torch_class(info)]


def _is_torch_class(info: dict) -> bool:
    # by module: bitsandbytes' classes have torch's names (bitsandbytes.optim.Adam, ...)
    return info['class'].startswith('torch.optim.') and info['class_name'] in TORCH_CLASSES


def _ref():
    return torch.load(REFERENCE, weights_only=True)


# the generator imports this module for the models before the reference exists
_REF = _ref() if os.path.exists(REFERENCE) else {'registry': {}, 'factory': {}, 'param_groups': {}, 'lists': []}
NAMES = _names(_REF)
TORCH_NAMED = _names(_REF, torch_only=True)
FACTORY_CASES = list(_REF['factory'])
GROUP_CASES = list(_REF['param_groups'])


def _case_uses_torch_class(case: dict) -> bool:
    # whether a factory case only needs torch-named classes (the others need sibling modules)
    opt = case['opt'].lower().split('_')[-1]
    info = _REF['registry'].get(opt)
    return info is None or _is_torch_class(info)


def test_reference_covers_the_registry():
    # the table was read from timm 1.0.31: 101 names, every one available here
    assert len(_REF['registry']) == 101 == len(NAMES)
    assert set(TORCH_NAMED) == {'sgd', 'momentum', 'nesterov', 'adam', 'adamw', 'nadam', 'radam', 'radamw',
                                'adamax', 'adadelta', 'adagrad', 'rmsprop'}


@pytest.mark.parametrize("name", ["create_optimizer_v2", "create_optimizer", "optimizer_kwargs",
                                  "list_optimizers", "get_optimizer_class", "get_optimizer_info",
                                  "param_groups_weight_decay", "param_groups_layer_decay",
                                  "auto_group_layers", "Lookahead"])
def test_signatures_equal_timm(ref, timm, name):
    expected = ref['signatures'][name]
    assert signature_of(getattr(timm, name)) == expected['params'], expected['text']


def test_optim_info_fields_equal_timm(ref, timm):
    assert field_list(timm.OptimInfo) == ref['optim_info_fields']
    assert timm.OptimInfo.__dataclass_params__.frozen


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_info_equals_timm(ref, timm, name):
    expected = ref['registry'][name]
    info = timm.get_optimizer_info(name)
    assert (info.name, info.description, info.has_eps, info.has_momentum, info.has_betas, info.num_betas,
            info.second_order, info.defaults) == (
        expected['name'], expected['description'], expected['has_eps'], expected['has_momentum'],
        expected['has_betas'], expected['num_betas'], expected['second_order'], expected['defaults'])
    assert timm.get_optimizer_info(name.upper()) is info


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_class_equals_timm(ref, timm, name):
    expected = ref['registry'][name]
    raw = timm.get_optimizer_class(name, bind_defaults=False)
    assert isinstance(raw, type) and issubclass(raw, torch.optim.Optimizer)
    assert raw.__name__ == expected['class_name']
    assert raw.__module__.startswith('adapters')
    bound = timm.get_optimizer_class(name)  # bind_defaults=True
    if expected['bound_keywords'] is None:
        assert bound is raw
    else:
        assert bound.func is raw and bound.args == ()
        assert list(bound.keywords.items()) == list(expected['bound_keywords'].items())


def test_unknown_names_raise_timm_error(timm):
    for call, text in ((lambda: timm.get_optimizer_info('NoSuch'), 'Optimizer nosuch not found in registry'),
                       (lambda: timm.get_optimizer_class('nosuch'), 'Optimizer nosuch not found in registry'),
                       (lambda: timm.create_optimizer_v2(nn.Linear(2, 2), 'lookahead_nosuch'),
                        'Optimizer nosuch not found in registry'),
                       (lambda: timm.create_optimizer_v2(nn.Linear(2, 2), ''), 'Optimizer  not found in registry')):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == text
    with pytest.raises(TypeError, match="opt must be"):
        timm.create_optimizer_v2(nn.Linear(2, 2), None)


@pytest.mark.parametrize("index", range(len(_REF['lists'])))
def test_list_optimizers_equals_timm(ref, timm, index):
    case = ref['lists'][index]
    assert timm.list_optimizers(**case['kwargs']) == case['result']


@pytest.mark.parametrize("case_id", GROUP_CASES)
def test_param_groups_equal_timm(ref, timm, case_id, caplog):
    case = ref['param_groups'][case_id]
    model = build_model(case['model'])
    fn = getattr(timm, case['fn'])
    with caplog.at_level(logging.WARNING):
        groups = fn(model, **case['kwargs'])
    assert describe_groups(groups, model) == case['groups']
    assert [p.requires_grad for p in model.parameters()] == case['requires_grad']
    warned = any('Layer-wise lr decay has no effect' in r.getMessage() for r in caplog.records)
    assert warned == case['warned']


def test_layer_maps_equal_timm(ref):
    from adapters.timm._param_groups import auto_group_layers, group_parameters
    for model_name, expected in ref['layer_maps'].items():
        model = build_model(model_name)
        if hasattr(model, 'group_matcher'):
            ours = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
        else:
            ours = auto_group_layers(model)
        assert ours == expected, model_name
    model = build_model('auto')
    assert auto_group_layers(model, num_groups=4) == ref['layer_maps_num_groups']


def _run_factory_case(timm, case):
    model = build_model(case['model'])
    kwargs = dict(case['kwargs'])
    if 'param_group_fn' in kwargs:
        kwargs['param_group_fn'] = PARAM_GROUP_FNS[kwargs['param_group_fn']]
    if case['legacy']:
        return model, timm.create_optimizer(SimpleNamespace(**kwargs), as_params(model, case['input']),
                                            **case['legacy_kwargs'])
    return model, timm.create_optimizer_v2(as_params(model, case['input']), case['opt'], **kwargs)


@pytest.mark.parametrize("case_id", FACTORY_CASES)
def test_create_optimizer_equals_timm(ref, timm, case_id):
    case = ref['factory'][case_id]
    expected = case['expected']
    if 'error' in expected:
        with pytest.raises(Exception) as err:
            _run_factory_case(timm, case)
        assert type(err.value).__name__ == expected['error']
        if expected['same_message']:  # the factory's own errors and Python's argument errors
            assert str(err.value).startswith(expected['message'])
        return
    model, opt = _run_factory_case(timm, case)
    assert describe_optimizer(opt, model) == expected


def test_factory_cases_cover_the_rules(ref):
    # the recorded cases cross each branch of the resolution at least once with torch classes
    cases = [c for c in ref['factory'].values() if _case_uses_torch_class(c)]
    opts = {c['opt'] for c in cases}
    assert {'lookahead_adam', 'foo_adamw', 'SGD', 'nesterov', 'momentum', 'rmsprop', 'adagrad'} <= opts
    keys = set().union(*(c['kwargs'] for c in cases))
    assert {'layer_decay', 'layer_decay_min_scale', 'layer_decay_no_opt_scale', 'filter_bias_and_bn',
            'fallback_list', 'fallback_no_weight_decay', 'param_group_fn', 'foreach', 'eps', 'betas'} <= keys
    assert any('error' in c['expected'] for c in cases)
    assert {c['input'] for c in cases} == {'module', 'params', 'groups'}
    assert any(c['legacy'] for c in cases)


# -- Lookahead --------------------------------------------------------------------------------

def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item() or 1.0
    return (a - b).abs().max().item() / scale


def _set_grads(model, grads: dict):
    for n, p in model.named_parameters():
        if p.requires_grad:
            g = grads.get(n)
            p.grad = None if g is None else g.clone()


def _state_close(ours: dict, theirs: dict, tol: float):
    assert set(ours) == set(theirs)
    for index, entry in theirs.items():
        assert set(ours[index]) == set(entry), index
        for key, value in entry.items():
            mine = ours[index][key]
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() > 0:
                assert mine.dtype == value.dtype and mine.shape == value.shape, (index, key)
                assert _rel(mine, value) <= tol, (index, key)
            else:
                assert float(mine) == float(value), (index, key)


def _groups_without_params(sd: dict) -> list[dict]:
    return [{k: _plain(v) for k, v in g.items()} for g in sd['param_groups']]


def _trajectory_optimizer(timm, traj, model, base: str):
    if base == 'factory':
        return timm.create_optimizer_v2(model, traj['opt'], **traj['kwargs'])
    # our Lookahead around torch's own SGD (timm's groups, built as timm's factory builds them)
    groups = timm.param_groups_weight_decay(model, traj['kwargs']['weight_decay'],
                                            no_weight_decay_list=model.no_weight_decay())
    sgd = torch.optim.SGD(groups, lr=traj['kwargs']['lr'], momentum=0.9, nesterov=False, weight_decay=0.0)
    return timm.Lookahead(sgd)


@pytest.mark.parametrize("traj_id,base", [('lookahead_adamw', 'factory'), ('lookahead_momentum', 'factory'),
                                          ('lookahead_momentum', 'torch')])
def test_lookahead_trajectory_equals_timm(ref, timm, traj_id, base):
    traj = ref['trajectories'][traj_id]
    model = build_model('matcher')
    model.load_state_dict(unflatten(traj['init'], model))
    opt = _trajectory_optimizer(timm, traj, model, base)
    assert type(opt).__name__ == 'Lookahead'
    worst = 0.0
    for step in range(len(traj['grads'])):
        _set_grads(model, unflatten(traj['grads'][step], model, traj['grad_present'][step]))
        opt.step()
        expected = unflatten(traj['params'][step], model)
        for n, p in model.named_parameters():
            worst = max(worst, _rel(p.detach(), expected[n]))
        assert worst <= TOL, (step, worst)
    sd = opt.state_dict()
    _state_close(sd['state'], traj['state'], TOL)
    assert _groups_without_params(sd) == traj['param_groups']
    assert sd['param_groups'][0]['lookahead_step'] == len(traj['grads'])

    # timm's checkpoint loads into a fresh optimizer at the same params and steps on identically
    fresh = build_model('matcher')
    fresh.load_state_dict(unflatten(traj['params'][-1], fresh))
    other = _trajectory_optimizer(timm, traj, fresh, base)
    other.load_state_dict({'state': traj['state'], 'param_groups': traj['param_groups']})
    _state_close(other.state_dict()['state'], traj['state'], 0.0)
    _set_grads(fresh, unflatten(traj['next_grads'], fresh, traj['next_grad_present']))
    other.step()
    expected = unflatten(traj['next_params'], fresh)
    for n, p in fresh.named_parameters():
        assert _rel(p.detach(), expected[n]) <= TOL, n


def test_lookahead_validation_and_api(timm):
    w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    base = torch.optim.SGD([w], lr=1.0, momentum=0.5, dampening=0.5)  # the buffer stays at g = 1
    with pytest.raises(ValueError, match=r"^Invalid slow update rate: 1.5 \(alpha"):
        timm.Lookahead(base, alpha=1.5)
    with pytest.raises(ValueError, match=r"^Invalid lookahead steps: 0 \(k"):
        timm.Lookahead(base, k=0)
    with pytest.raises(TypeError, match="base_optimizer"):
        timm.Lookahead([w])
    opt = timm.Lookahead(base, alpha=0.25, k=2)
    assert base.defaults['lookahead_k'] == 2 and opt.param_groups is base.param_groups
    calls = []
    opt.register_step_post_hook(lambda *a: calls.append('post'))
    for _ in range(2):
        w.grad = torch.ones(2, dtype=torch.float64)
        opt.step()
    assert calls == ['post', 'post']
    assert torch.equal(opt.state[w]['lookahead_slow_buff'], torch.full((2,), -2.0, dtype=torch.float64))
    assert 'momentum_buffer' in opt.state[w]  # the base's state, merged
    opt.zero_grad()
    assert w.grad is None
    # sync_lookahead syncs now; a param without a grad is not synced
    w.grad = torch.ones(2, dtype=torch.float64)
    opt.step()  # fast -3, slow -2 -> no sync yet (step 3)
    opt.sync_lookahead()
    assert torch.equal(w.detach(), torch.full((2,), -2.25, dtype=torch.float64))
    # add_param_group goes to the base with the lookahead keys
    v = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt.add_param_group({'params': [v]})
    assert base.param_groups[-1]['lookahead_alpha'] == 0.25 and base.param_groups[-1]['lookahead_step'] == 0
    # a base state_dict without lookahead keys loads, with the defaults restored
    plain = torch.optim.SGD([w, v], lr=1.0).state_dict()
    opt.load_state_dict({'state': {}, 'param_groups': [dict(plain['param_groups'][0], params=[0]),
                                                       dict(plain['param_groups'][0], params=[1])]})
    assert opt.param_groups[0]['lookahead_k'] == 2 and opt.state == {}
    with pytest.raises(ValueError, match="lookahead_slow_buff"):
        opt.load_state_dict({'state': {0: {'lookahead_slow_buff': torch.zeros(3)}},
                             'param_groups': opt.state_dict()['param_groups']})
    # pickles (with its base optimizer and slow weights) and steps on after unpickling
    w.grad = torch.ones(2, dtype=torch.float64)
    fresh = timm.Lookahead(torch.optim.SGD([w], lr=1.0), alpha=0.5, k=1)
    fresh.step()
    restored = pickle.loads(pickle.dumps(fresh))
    restored_w = restored.param_groups[0]['params'][0]
    assert torch.equal(restored.state[restored_w]['lookahead_slow_buff'], w.detach())
    restored_w.grad = torch.ones(2, dtype=torch.float64)
    restored.step()
    assert restored.param_groups[0]['lookahead_step'] == 2


def test_lookahead_with_compiled_flat_engine_matches_eager(timm):
    # our optimizer's compiled flat engine keeps params as views; the sync writes through them
    import adapters
    trajectories = []
    for compile in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1)).double()
        opt = timm.Lookahead(adapters.AdamW(model.parameters(), lr=0.1, compile=compile), k=2)
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            opt.step()
        trajectories.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*trajectories):
        assert _rel(a, b) <= 1e-12


def test_lr_scale_is_not_applied_by_the_optimizer(timm):
    # as in timm: the groups carry lr_scale; only a timm-style scheduler multiplies it in
    model = build_model('matcher')
    opt = timm.create_optimizer_v2(model, 'momentum', lr=0.1, momentum=0.0, layer_decay=0.5)
    assert {g['lr'] for g in opt.param_groups} == {0.1}
    assert sorted({g['lr_scale'] for g in opt.param_groups}) == [0.0625, 0.125, 0.25, 0.5, 1.0]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p) if p.requires_grad else None
    opt.step()
    for n, p in model.named_parameters():
        if p.requires_grad:  # one SGD step at the base lr whatever the layer
            assert torch.allclose(before[n] - p.detach(), torch.full_like(p, 0.1), rtol=0, atol=1e-15), n


def test_optimizer_kwargs_equals_timm(ref, timm):
    for case in ref['optimizer_kwargs']:
        assert timm.optimizer_kwargs(SimpleNamespace(**case['cfg'])) == case['result']


def test_namespace_exports_timm_names(timm):
    import adapters
    for name in ("SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adamax", "Adadelta", "Adagrad", "RMSprop"):
        assert getattr(timm, name) is getattr(adapters, name)
    assert adapters.timm is timm
    for name in timm.__all__:
        assert hasattr(timm, name), name
