"""``partition`` (alias ``multi_transform``): a different transform for each group of leaves."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import optree

from ..base import GradientTransformation, Needs, declare, needs_of_all, set_to_zero
from .labels import PerLeafSpec, resolve_labels, resolve_mask
from .masking import MaskedState, check_transform, flatten_inputs, hide, routed_update

PyTree = Any


class PartitionState(NamedTuple):
    """State of :func:`partition`."""

    inner_states: dict  # {label: MaskedState(inner_state)}: each group's transform state,
    #                     holding tensors only for that group's leaves (others None)


def partition(transforms: Mapping[Hashable, GradientTransformation],
              param_labels: PyTree | Callable[[PyTree], PyTree], *,
              mask_compatible_extra_args: bool = False) -> GradientTransformation:
    """Give each leaf a label and apply ``transforms[label]`` to the leaves with that label.

    Each group behaves as ``masked(transforms[label], labels == label)``: its transform
    sees ``None`` at the other groups' leaves, so its state holds tensors only for its own
    leaves. Groups are updated one after another in the order of ``transforms``; every
    extra keyword argument (``donate`` included) is passed to each. A transform whose
    label no leaf has is fine (it is still called, on a tree of Nones).

    ``param_labels`` is a tree of labels with the params' structure or a prefix of it
    (``("generator", "discriminator")`` for params ``(gen_params, disc_params)``), or a
    callable ``f(params) -> such a tree`` (called with ``params``, or with the updates
    when ``update`` gets no params), such as
    :func:`~functional_optim.wrappers.labels.label_by_name` for rules on leaf names.
    Every leaf must get a label that is a key of ``transforms`` (ValueError otherwise).

    Args:
      transforms: ``{label: transform}``.
      param_labels: the labels, as above.
      mask_compatible_extra_args: mask extra arguments shaped like the updates for each
        group, as in :func:`~functional_optim.wrappers.masking.masked`. Default False.

    Example:
      No weight decay on biases and norm weights, on ``dict(model.named_parameters())``:

      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.partition import partition
      >>> from functional_optim.wrappers.labels import label_by_name
      >>> model = torch.nn.Sequential()
      >>> model.add_module("fc", torch.nn.Linear(3, 3))
      >>> model.add_module("norm", torch.nn.LayerNorm(3))
      >>> params = {n: p.detach() for n, p in model.named_parameters()}
      >>> tx = partition(
      ...     {"decay": fo.adamw(1e-3, weight_decay=0.1), "no_decay": fo.adamw(1e-3, weight_decay=0.0)},
      ...     label_by_name([("*.bias", "no_decay"), ("*norm*", "no_decay")], default="decay"))
      >>> state = tx.init(params)
      >>> updates, state = tx.update({n: torch.ones_like(p) for n, p in params.items()}, state, params)
      >>> mu = fo.tree.get(state.inner_states["decay"], "mu")  # Adam's first moment: fc.weight only
      >>> [n for n, m in mu.items() if m is not None]
      ['fc.weight']
    """
    if not isinstance(transforms, Mapping):
        raise TypeError(f"transforms must be a mapping {{label: transform}}, got {type(transforms).__name__}")
    transforms = dict(transforms)
    for label, tx in transforms.items():
        check_transform(f"transforms[{label!r}]", tx)
    if not isinstance(mask_compatible_extra_args, bool):
        raise TypeError("mask_compatible_extra_args must be a bool, got "
                        f"{type(mask_compatible_extra_args).__name__}")
    groups = list(transforms)

    def init_fn(params):
        leaves, spec = optree.tree_flatten(params, none_is_leaf=True)
        labels = resolve_labels(param_labels, params, groups)
        return PartitionState(inner_states={
            g: MaskedState(inner_state=transforms[g].init(hide(leaves, [bool(lab == g) for lab in labels], spec)))
            for g in groups})

    def update_fn(updates, state, params=None, **extra):
        if not (isinstance(state, PartitionState) and isinstance(state.inner_states, dict)
                and list(state.inner_states) == groups):
            got = (list(state.inner_states) if isinstance(state, PartitionState)
                   and isinstance(state.inner_states, dict) else type(state).__name__)
            raise ValueError(f"state must be a PartitionState with inner states for {groups} "
                             f"(made by partition(...).init), got {got}")
        u_leaves, p_leaves, spec = flatten_inputs(updates, params)
        labels = resolve_labels(param_labels, updates if params is None else params, groups)
        new_states = {}
        for g in groups:
            inner = state.inner_states[g]
            if not isinstance(inner, MaskedState):
                raise ValueError(f"state.inner_states[{g!r}] must be a MaskedState, got {type(inner).__name__}")
            u_leaves, new_inner = routed_update(
                transforms[g], [bool(lab == g) for lab in labels], spec, u_leaves, inner.inner_state,
                p_leaves, extra, mask_compatible_extra_args, f"transforms[{g!r}]")
            new_states[g] = MaskedState(inner_state=new_inner)
        return optree.tree_unflatten(spec, u_leaves), PartitionState(inner_states=new_states)

    # labels choose leaves: each param must be its own leaf
    return declare(GradientTransformation(init_fn, update_fn),
                   needs_of_all(*transforms.values(), at_least=Needs.LEAVES))


multi_transform = partition
MultiTransformState = PartitionState


def selective_transform(optimizer: GradientTransformation, *,
                        freeze_mask: Any) -> GradientTransformation:
    """Train only the leaves not selected by ``freeze_mask``: ``optimizer`` on the others,
    zero updates (and no optimizer state) on the frozen ones.

    It is ``partition({"train": optimizer, "freeze": set_to_zero()}, labels)`` with the
    label ``"freeze"`` where the mask is True (optax's ``selective_transform``).

    Args:
      optimizer: the transform for the trained leaves.
      freeze_mask: True at the leaves to freeze: anything ``masked`` accepts (bool tree or
        prefix, callable, glob string or list of globs).

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.wrappers.partition import selective_transform
      >>> tx = selective_transform(fo.sgd(0.1), freeze_mask="backbone.*")
      >>> params = {"backbone.w": torch.ones(2), "head.w": torch.ones(2)}
      >>> tx.update({"backbone.w": torch.ones(2), "head.w": torch.ones(2)}, tx.init(params), params)[0]
      {'backbone.w': tensor([0., 0.]), 'head.w': tensor([-0.1000, -0.1000])}
    """
    check_transform("optimizer", optimizer)

    labels = PerLeafSpec(
        lambda tree: ["freeze" if k else "train" for k in resolve_mask(freeze_mask, tree, "freeze_mask")],
        f"selective_transform labels (freeze_mask={freeze_mask!r})")
    return partition({"train": optimizer, "freeze": set_to_zero()}, labels)
