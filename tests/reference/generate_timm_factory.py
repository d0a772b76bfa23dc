"""Generate tests/reference/timm_factory.pt: timm 1.0.31's factory, registry, param groups
and Lookahead, for ``tests/test_timm_factory.py`` (which never imports timm).

Run from ``tests/reference`` (torch 2.13, timm 1.0.31; torchvision is stubbed by
``timm_shim``)::

    cd tests/reference && python generate_timm_factory.py

The models, the param-group functions given by name and the describing helpers are those
of ``tests/test_timm_factory.py`` (imported from there, so both sides build the same
modules). Recorded (a plain dict, loadable with ``torch.load(..., weights_only=True)``):

* ``signatures``: per public function (and ``Lookahead``), ``(name, kind, repr(default))``
  per parameter and ``str(inspect.signature(...))``; ``optim_info_fields``.
* ``registry``: per name, the ``OptimInfo`` fields (the class as ``"torch.optim.X"``,
  ``"timm.optim.X"`` or timm's string path), the class name, and the keywords bound by
  ``get_optimizer_class(name)`` (None when it returns the class itself).
* ``lists``: ``list_optimizers`` for several filters, exclusions and descriptions.
* ``layer_maps``: the layer ids of each model (``group_parameters`` or ``auto_group_layers``).
* ``param_groups``: ``param_groups_weight_decay`` / ``param_groups_layer_decay`` outcomes
  (groups with param names, ``requires_grad`` after, whether timm warned).
* ``factory``: ``create_optimizer_v2`` / ``create_optimizer`` cases and their outcomes
  (class, base class under Lookahead, per-group hyperparameters with param names,
  ``requires_grad`` after) or the error (type, message, whether ours must repeat it).
* ``optimizer_kwargs``: argparse-style configs and timm's kwargs.
* ``trajectories``: float64 runs of ``'lookahead_adamw'`` and ``'lookahead_momentum'`` on
  the matcher model: initial values, grads per step (``grad_present`` marks the params
  given a gradient; the others get None), params after every step, the final state_dict,
  and one more step from that state. Values are flattened over ``named_parameters()``
  (``flatten``/``unflatten`` of the test module), one row per step.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from types import SimpleNamespace

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/: the shared models

from timm_shim import timm_optim  # noqa: E402

import test_timm_factory as shared  # noqa: E402

OUT = os.path.join(HERE, "timm_factory.pt")
registry = sys.modules['timm.optim._optim_factory'].default_registry


def class_path(opt_class) -> str:
    if isinstance(opt_class, str):
        return opt_class
    root = 'torch.optim' if opt_class.__module__.startswith('torch.') else 'timm.optim'
    return f"{root}.{opt_class.__name__}"


def record_signatures() -> dict:
    out = {}
    for name in ["create_optimizer_v2", "create_optimizer", "optimizer_kwargs", "list_optimizers",
                 "get_optimizer_class", "get_optimizer_info", "param_groups_weight_decay",
                 "param_groups_layer_decay", "auto_group_layers", "Lookahead"]:
        obj = getattr(timm_optim, name)
        out[name] = {'params': shared.signature_of(obj), 'text': str(inspect.signature(obj))}
    return out


def record_registry() -> dict:
    out = {}
    for name in timm_optim.list_optimizers():
        info = timm_optim.get_optimizer_info(name)
        path = class_path(info.opt_class)
        if not path.startswith(('apex.', 'bitsandbytes.')):
            bound = timm_optim.get_optimizer_class(name)
            keywords = dict(bound.keywords) if hasattr(bound, 'keywords') else None
        else:  # timm imports them (and needs CUDA); the keywords are the registry defaults
            keywords = dict(info.defaults) if info.defaults else None
        out[name] = {'name': info.name, 'class': path, 'class_name': path.rsplit('.', 1)[-1],
                     'description': info.description, 'has_eps': info.has_eps,
                     'has_momentum': info.has_momentum, 'has_betas': info.has_betas,
                     'num_betas': info.num_betas, 'second_order': info.second_order,
                     'defaults': None if info.defaults is None else dict(info.defaults),
                     'bound_keywords': keywords}
    return out


LIST_CASES = [
    {}, {'filter': 'adam*'}, {'filter': ['la*', 'nla*']},
    {'filter': '*adam*', 'exclude_filters': ['bnb*', 'fused*']},
    {'with_description': True}, {'filter': 'c*', 'with_description': True},
    {'filter': ['*w', 'sgd*'], 'exclude_filters': ['c*', '*8bit']}, {'filter': 'nothing*'},
    {'exclude_filters': ['*']}, {'filter': 'rmsprop*', 'exclude_filters': ['*c']},
]

NO_WD = ('pos_embed', 'cls_token', 'blocks.1.fc.*')
GROUP_CASES = {
    'wd_default': ('matcher', 'param_groups_weight_decay', {}),
    'wd_no_weight_decay_list': ('matcher', 'param_groups_weight_decay',
                                {'weight_decay': 0.05, 'no_weight_decay_list': NO_WD}),
    'wd_zero_fallback': ('matcher', 'param_groups_weight_decay',
                         {'weight_decay': 0.0, 'fallback_list': ('head.*',)}),
    'wd_none': ('matcher', 'param_groups_weight_decay', {'weight_decay': None}),
    'wd_keep_1d': ('matcher', 'param_groups_weight_decay',
                   {'weight_decay': 0.1, 'weight_decay_exclude_1d': False, 'no_weight_decay_list': ('pos_embed',)}),
    'wd_fallback_no_wd': ('matcher', 'param_groups_weight_decay',
                          {'weight_decay': 0.1, 'no_weight_decay_list': NO_WD, 'fallback_list': ('stem.*',),
                           'fallback_no_weight_decay': True}),
    'wd_glob_patterns': ('matcher', 'param_groups_weight_decay',  # whole-name globs: 'head' matches nothing
                         {'weight_decay': 0.1, 'weight_decay_exclude_1d': False,
                          'no_weight_decay_list': ('head', '*.fc.weight', 'stem.b?as'), 'fallback_list': ('pos',)}),
    'wd_auto': ('auto', 'param_groups_weight_decay', {'weight_decay': 0.02}),
    'ld_default': ('matcher', 'param_groups_layer_decay', {'no_weight_decay_list': NO_WD}),
    'ld_min_scale': ('matcher', 'param_groups_layer_decay', {'layer_decay': 0.5, 'min_scale': 0.2}),
    'ld_no_opt_scale': ('matcher', 'param_groups_layer_decay', {'layer_decay': 0.5, 'no_opt_scale': 0.2}),
    'ld_fallback_keep_1d': ('matcher', 'param_groups_layer_decay',
                            {'weight_decay': 0.1, 'fallback_list': ('head.*',), 'weight_decay_exclude_1d': False,
                             'no_weight_decay_list': NO_WD, 'fallback_no_weight_decay': True}),
    'ld_glob_patterns': ('matcher', 'param_groups_layer_decay',
                         {'weight_decay_exclude_1d': False, 'no_weight_decay_list': ('head', 'blocks.[02].*'),
                          'fallback_list': ('*bias',)}),
    'ld_fn_matcher': ('fn_matcher', 'param_groups_layer_decay', {'layer_decay': 0.6}),
    'ld_auto': ('auto', 'param_groups_layer_decay', {'layer_decay': 0.8, 'weight_decay': 0.01}),
    'ld_plain_warns': ('plain', 'param_groups_layer_decay', {'layer_decay': 0.8}),
    'ld_verbose': ('auto', 'param_groups_layer_decay', {'verbose': True}),
}


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def record_param_groups() -> dict:
    handler = _Warnings()
    logging.getLogger('timm.optim._param_groups').addHandler(handler)
    out = {}
    for case_id, (model_name, fn, kwargs) in GROUP_CASES.items():
        handler.messages.clear()
        model = shared.build_model(model_name)
        groups = getattr(timm_optim, fn)(model, **kwargs)
        out[case_id] = {'model': model_name, 'fn': fn, 'kwargs': kwargs,
                        'groups': shared.describe_groups(groups, model),
                        'requires_grad': [p.requires_grad for p in model.parameters()],
                        'warned': any('Layer-wise lr decay has no effect' in m for m in handler.messages)}
    return out


def record_layer_maps() -> tuple[dict, dict]:
    group_parameters = sys.modules['timm.models._manipulate'].group_parameters
    maps = {}
    for name in shared.MODELS:
        model = shared.build_model(name)
        if hasattr(model, 'group_matcher'):
            maps[name] = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
        else:
            maps[name] = timm_optim.auto_group_layers(model)
    return maps, timm_optim.auto_group_layers(shared.build_model('auto'), num_groups=4)


def _case(opt, model='matcher', input='module', legacy=False, legacy_kwargs=None, **kwargs):
    return {'opt': opt, 'model': model, 'input': input, 'kwargs': kwargs, 'legacy': legacy,
            'legacy_kwargs': legacy_kwargs or {}}


def _legacy(namespace, **legacy_kwargs):
    # create_optimizer(args, model, **legacy_kwargs) with args = SimpleNamespace(**namespace)
    return {'opt': namespace['opt'], 'model': 'matcher', 'input': 'module', 'kwargs': namespace, 'legacy': True,
            'legacy_kwargs': legacy_kwargs}


FALLBACK = ['head.*', 'stem.weight']
FACTORY_CASES = {
    # torch-named classes: resolution, argument assembly, param groups
    'sgd_defaults': _case('sgd'),
    'sgd_upper_case': _case('SGD', lr=0.1, weight_decay=1e-4),
    'momentum': _case('momentum', lr=0.1, weight_decay=1e-4, momentum=0.8),
    'nesterov_alias': _case('nesterov', lr=0.05),
    'sgd_drops_eps_betas': _case('sgd', lr=0.1, eps=1e-3, betas=(0.1, 0.2)),
    'sgd_filter_bias_false': _case('sgd', lr=0.1, weight_decay=1e-4, filter_bias_and_bn=False),
    'adamw': _case('adamw', lr=1e-3, weight_decay=0.05),
    'adamw_lr_none': _case('adamw', weight_decay=0.05),
    'foo_prefix_ignored': _case('foo_adamw', lr=2e-3, weight_decay=0.05, betas=(0.8, 0.9), eps=1e-7),
    'lookahead_adam': _case('lookahead_adam', lr=1e-3, weight_decay=0.01),
    'lookahead_sgd_layer_decay': _case('lookahead_sgd', lr=0.1, layer_decay=0.5),
    'adam_layer_decay': _case('adam', lr=1e-3, weight_decay=0.05, layer_decay=0.7),
    'adamw_layer_min_scale': _case('adamw', weight_decay=0.05, layer_decay=0.5, layer_decay_min_scale=0.3),
    'adamw_layer_no_opt_scale': _case('adamw', layer_decay=0.5, layer_decay_no_opt_scale=0.3),
    'adamw_layer_fn_matcher': _case('adamw', model='fn_matcher', layer_decay=0.6, weight_decay=0.1),
    'adam_layer_auto': _case('adam', model='auto', layer_decay=0.8, weight_decay=0.01),
    'sgd_layer_plain': _case('sgd', model='plain', layer_decay=0.8, lr=0.1),
    'adamw_fallback': _case('adamw', weight_decay=0.05, fallback_list=FALLBACK),
    'adamw_fallback_no_wd': _case('adamw', weight_decay=0.05, fallback_no_weight_decay=True),
    'adamw_fallback_layer': _case('adamw', weight_decay=0.05, layer_decay=0.7, fallback_list=['head.*'],
                                  filter_bias_and_bn=False),
    'rmsprop': _case('rmsprop', lr=1e-2, eps=1e-3),
    'rmsprop_momentum': _case('rmsprop', lr=1e-2, momentum=0.0, alpha=0.95),
    'adagrad_drops_betas': _case('adagrad', lr=0.1, betas=(0.1, 0.2)),
    'adagrad_eps_given': _case('adagrad', eps=1e-6),
    'adadelta_no_momentum': _case('adadelta', momentum=0.5, weight_decay=0.1),
    'adamax_foreach': _case('adamax', foreach=False),
    'adam_foreach_kwarg_wins': _case('adam', foreach=True, **{'amsgrad': True}),
    'radamw': _case('radamw', lr=1e-3, weight_decay=0.01),
    'radam_kwarg': _case('radam', decoupled_weight_decay=True),
    'radamw_override': _case('radamw', decoupled_weight_decay=False),
    'nadam': _case('nadam', lr=1e-3, momentum_decay=5e-3),
    'params_input': _case('adamw', input='params', weight_decay=0.1),
    'groups_input': _case('sgd', input='groups', lr=0.1, weight_decay=0.01),
    'param_group_fn': _case('sgd', lr=0.01, weight_decay=0.02, param_group_fn='head_lr'),
    'param_group_fn_wins': _case('adam', param_group_fn='head_lr', layer_decay=0.5),
    'legacy_adamw': _legacy({
        'opt': 'adamw', 'lr': 1e-3, 'weight_decay': 0.05, 'momentum': 0.9, 'opt_eps': 1e-6,
        'opt_betas': (0.9, 0.95), 'layer_decay': 0.75, 'opt_args': {'amsgrad': True}, 'opt_foreach': None}),
    'legacy_momentum': _legacy({
        'opt': 'lookahead_momentum', 'lr': 0.1, 'weight_decay': 1e-4, 'momentum': 0.8, 'opt_foreach': False,
        'layer_decay_min_scale': 0.5, 'layer_decay_no_opt_scale': None}, filter_bias_and_bn=False),
    # errors with torch-named classes
    'unknown_name': _case('nosuch'),
    'unknown_after_lookahead': _case('lookahead_nosuch'),
    'unknown_kwarg': _case('adam', foo=1),
    'sgd_nesterov_needs_momentum': _case('sgd', momentum=0.0),
    'negative_lr': _case('adam', lr=-1.0),
    # timm's own classes (adapters.timm._<module>, written by sibling modules)
    'sgdp_lr_none': _case('sgdp'),
    'sgdp': _case('sgdp', lr=0.1, weight_decay=1e-4),
    'csgdp': _case('csgdp', lr=0.1),
    'adamp': _case('adamp', lr=1e-3, weight_decay=0.01),
    'cadamp': _case('cadamp', lr=1e-3),
    'adabelief': _case('adabelief', lr=1e-3, weight_decay=0.01, foreach=False),
    'radabelief': _case('radabelief'),
    'adamwlegacy': _case('adamwlegacy', lr=1e-3),
    'cadamw': _case('cadamw', lr=1e-3, weight_decay=0.05),
    'adamc': _case('adamc', lr=1e-3, weight_decay=0.05),
    'nadamlegacy': _case('nadamlegacy'),
    'radamlegacy': _case('radamlegacy', eps=1e-6),
    'rmsproptf': _case('rmsproptf', lr=1e-2),
    'rmsproptfw': _case('rmsproptfw', lr=1e-2, weight_decay=1e-5),
    'crmsproptf': _case('crmsproptf'),
    'lamb_layer_decay': _case('lamb', lr=1e-3, weight_decay=0.02, layer_decay=0.75),
    'lambc': _case('lambc', lr=1e-3),
    'lambcd': _case('lambcd', lr=1e-3, weight_decay=0.01),
    'lars': _case('lars', lr=0.1),
    'nlarc': _case('nlarc', lr=0.1, foreach=False),
    'madgrad': _case('madgrad'),
    'madgradw': _case('madgradw', lr=1e-2, weight_decay=1e-4),
    'adafactor_lr_none': _case('adafactor'),
    'cadafactor': _case('cadafactor', lr=1e-3),
    'adahessian': _case('adahessian', lr=0.1, betas=(0.8, 0.9)),
    'novograd': _case('novograd', lr=1e-3),
    'novogradc': _case('novogradc', lr=1e-3, weight_decay=0.01),
    'lookahead_lamb': _case('lookahead_lamb', lr=1e-3),
    **{f'{name}_foreach_type_error': _case(name, lr=0.1, foreach=True)
       for name in ('sgdp', 'adamp', 'nadamlegacy', 'radamlegacy', 'novograd', 'madgrad', 'adafactor',
                    'adahessian')},
}


def _same_message(err: Exception) -> bool:
    # errors whose text ours repeat (as a prefix): the factory's own, Python's argument errors,
    # torch's missing-required-lr and SGD's nesterov check. The drop-ins word value checks
    # their own way (adapters.Adam: "Invalid lr: ..."), so the others compare by type.
    text = str(err)
    return any(s in text for s in ('not found in registry', 'unexpected keyword argument',
                                   'required optimization parameter', 'Nesterov momentum requires'))


def record_factory() -> dict:
    out = {}
    for case_id, case in FACTORY_CASES.items():
        model = shared.build_model(case['model'])
        params = shared.as_params(model, case['input'])
        kwargs = dict(case['kwargs'])
        if 'param_group_fn' in kwargs:
            kwargs['param_group_fn'] = shared.PARAM_GROUP_FNS[kwargs['param_group_fn']]
        try:
            if case['legacy']:
                opt = timm_optim.create_optimizer(SimpleNamespace(**kwargs), params, **case['legacy_kwargs'])
            else:
                opt = timm_optim.create_optimizer_v2(params, case['opt'], **kwargs)
        except Exception as err:  # noqa: BLE001  (recorded)
            expected = {'error': type(err).__name__, 'message': str(err), 'same_message': _same_message(err)}
        else:
            expected = shared.describe_optimizer(opt, model)
        out[case_id] = {**case, 'expected': expected}
    return out


OPTIMIZER_KWARGS_CASES = [
    {'opt': 'sgd', 'lr': 0.1, 'weight_decay': 1e-4, 'momentum': 0.9},
    {'opt': 'adamw', 'lr': None, 'weight_decay': 0.05, 'momentum': 0.9, 'opt_eps': 1e-6, 'opt_betas': (0.9, 0.95),
     'layer_decay': 0.65, 'layer_decay_min_scale': 0.1, 'layer_decay_no_opt_scale': 0.01,
     'opt_args': {'amsgrad': True, 'lr': 0.5}, 'opt_foreach': True},
    {'opt': 'lamb', 'lr': 1e-3, 'weight_decay': 0.0, 'momentum': 0.0, 'opt_eps': None, 'opt_betas': None,
     'layer_decay': None, 'opt_args': None, 'opt_foreach': None},
]


def record_optimizer_kwargs() -> list:
    return [{'cfg': cfg, 'result': timm_optim.optimizer_kwargs(SimpleNamespace(**cfg))}
            for cfg in OPTIMIZER_KWARGS_CASES]


STEPS = 13  # k=6: syncs after steps 6 and 12 (the first only creates the slow weights)


def record_trajectory(opt_name: str, kwargs: dict, none_grads: dict) -> dict:
    model = shared.build_model('matcher', seed=3)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(7)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    init = shared.flatten(dict(model.named_parameters()), model)
    opt = timm_optim.create_optimizer_v2(model, opt_name, **kwargs)
    assert type(opt).__name__ == 'Lookahead'
    gen = torch.Generator().manual_seed(11)
    named = list(model.named_parameters())

    def grads_for(step):
        grads = {}
        for n, p in named:
            if not p.requires_grad:
                continue
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if step not in none_grads.get(n, ()):
                grads[n] = g
        return shared.flatten(grads, model), torch.tensor([n in grads for n, _ in named])

    def apply(flat, present):
        grads = shared.unflatten(flat, model, present)
        for n, p in named:
            p.grad = grads.get(n)
        opt.step()
        return shared.flatten({n: p.detach() for n, p in named}, model)

    grads, present, params = [], [], []
    for step in range(STEPS):
        flat, mask = grads_for(step)
        grads.append(flat)
        present.append(mask)
        params.append(apply(flat, mask))
    sd = opt.state_dict()
    state = {int(i): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in e.items()}
             for i, e in sd['state'].items()}
    param_groups = [{k: shared._plain(v) for k, v in g.items()} for g in sd['param_groups']]
    next_grads, next_present = grads_for(STEPS)
    next_params = apply(next_grads, next_present)
    return {'opt': opt_name, 'kwargs': kwargs, 'init': init, 'grads': torch.stack(grads),
            'grad_present': torch.stack(present), 'params': torch.stack(params), 'state': state,
            'param_groups': param_groups, 'next_grads': next_grads, 'next_grad_present': next_present,
            'next_params': next_params}


def main() -> None:
    torch.set_default_dtype(torch.float32)
    reference = {
        'timm_version': sys.modules['timm'].__version__,
        'signatures': record_signatures(),
        'optim_info_fields': shared.field_list(timm_optim.OptimInfo),
        'registry': record_registry(),
        'lists': [{'kwargs': kw, 'result': timm_optim.list_optimizers(**kw)} for kw in LIST_CASES],
        'param_groups': record_param_groups(),
        'factory': record_factory(),
        'optimizer_kwargs': record_optimizer_kwargs(),
        'trajectories': {
            'lookahead_adamw': record_trajectory(
                'lookahead_adamw', {'lr': 1e-2, 'weight_decay': 0.05, 'betas': (0.9, 0.99)}, {}),
            'lookahead_momentum': record_trajectory(
                'lookahead_momentum', {'lr': 0.05, 'weight_decay': 1e-3},
                {'head.bias': range(0, 7), 'cls_token': (11, 12)}),
        },
    }
    reference['layer_maps'], reference['layer_maps_num_groups'] = record_layer_maps()
    torch.save(reference, OUT)
    torch.load(OUT, weights_only=True)  # loadable as the tests load it
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes): {len(reference['registry'])} names, "
          f"{len(reference['factory'])} factory cases, {len(reference['param_groups'])} group cases")


if __name__ == "__main__":
    main()
