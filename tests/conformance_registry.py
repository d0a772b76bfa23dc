"""The catalogue registry that drives ``tests/test_conformance.py``.

Every public name of ``functional_optim`` is classified here, explicitly:

* ``ENTRIES``: the names that build a :class:`~functional_optim.GradientTransformation`
  (optimizer aliases, transforms, wrappers and combinators), each with one or more
  :class:`Sample` constructions whose non-default options exercise its branches;
* ``NON_TRANSFORMS``: every other export, with its kind (state type, schedule, utility,
  module, ...).

A name exported later without an entry in one of the two fails the conformance suite,
and so does an entry naming something that is not exported.

Exceptions to individual checks are listed per entry (or per sample) with the reason;
an excepted (entry, sample, check) triple is simply not generated (no ``pytest.skip``).
Keep them few and honest: each one says why the check does not apply.

The checks (see ``test_conformance.py``): ``purity``, ``lr_grad``, ``param_grad``,
``vmap_batch``, ``vmap_shared``, ``vmap_hypergrad``, ``second_order``, ``compile``,
``none_leaves``, ``bf16``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

import functional_optim as fo
from functional_optim.transforms.sparse import SparseRows

CHECKS = ("purity", "lr_grad", "param_grad", "vmap_batch", "vmap_shared", "vmap_hypergrad",
          "second_order", "compile", "none_leaves", "bf16")

LR = 0.05  # the learning rate of the samples built without an explicit one


@dataclass(frozen=True)
class Sample:
    """One construction of an entry.

    ``make(lr)`` builds the transform with the learning rate ``lr`` (a Python float or a
    0-d tensor: a hypergradient w.r.t. it is taken). For a pure transform that takes no
    learning rate, ``make`` is ``chain(build(), scale_by_learning_rate(lr))``.
    ``build()`` is the zero-arg construction the non-differentiating checks run.
    """

    name: str
    build: Callable[[], fo.GradientTransformation]
    make: Callable[[Any], fo.GradientTransformation]
    exceptions: Mapping[str, str] = field(default_factory=dict)  # check -> reason


def opt(name: str, make: Callable[[Any], fo.GradientTransformation], **exceptions: str) -> Sample:
    """A sample that takes the learning rate itself (an alias, or a wrapper around one)."""
    return Sample(name, lambda: make(LR), make, dict(exceptions))


def tx(name: str, build: Callable[[], fo.GradientTransformation], *, last: bool = False,
       **exceptions: str) -> Sample:
    """A sample of a transform without a learning rate: ``make`` chains it with
    ``scale_by_learning_rate(lr)`` (after it; before it when ``last``, for transforms that
    must see the final update, e.g. ``keep_params_nonnegative``)."""
    if last:
        def make(lr):
            return fo.chain(fo.scale_by_learning_rate(lr), build())
    else:
        def make(lr):
            return fo.chain(build(), fo.scale_by_learning_rate(lr))
    return Sample(name, build, make, dict(exceptions))


def all_rows(g: Any) -> Any:
    """A dense gradient as :class:`SparseRows` touching every row (indices 0..n-1).

    ``sparse_adam`` refuses dense gradients (as torch's SparseAdam); the ``SparseRows``
    form is its dense-tensor, compilable, ``torch.func``-able form. Touching every row
    makes the sparse update equal a dense Adam-like one over all rows.
    """
    if g is None:
        return None
    if g.dim() == 0:
        raise ValueError("SparseRows needs a param with rows")
    idx = torch.arange(g.shape[0], device=g.device)
    return SparseRows(idx, g)


@dataclass(frozen=True)
class Entry:
    """A public name that builds GradientTransformations, and how the checks run it."""

    name: str  # the name exported by functional_optim
    kind: str  # "alias" | "transform" | "wrapper"
    samples: tuple[Sample, ...]
    exceptions: Mapping[str, str] = field(default_factory=dict)  # check -> reason (all samples)
    # dense gradient tree -> the form ``update`` takes (e.g. SparseRows for sparse_adam)
    grad_form: Callable[[Any], Any] | None = None
    # (params, loss_fn) -> extra keyword arguments of ``update`` (e.g. lbfgs's value/value_fn)
    extras: Callable[[Any, Callable[[Any], torch.Tensor]], dict] | None = None
    # set (to the reason) when the update is a difference of params, p_new - p, computed in
    # the params' dtype: the bf16 check then allows one bf16 ulp of the param on top
    bf16_update_from_params: str | None = None

    def exception(self, sample: Sample, check: str) -> str | None:
        return sample.exceptions.get(check) or self.exceptions.get(check)


_LBFGS_HOST = ("reads loss/gradient values on the host (.item(), float(lr)) and branches on them "
               "like torch.optim.LBFGS, and calls value_fn a data-dependent number of times; "
               "documented as exempt from the torch.compile and vmap contracts")
_LBFGS_NO_GRAD = ("not differentiable by design: lr is read with float(lr) and value_fn is "
                  "re-evaluated on fresh detached leaves with torch.autograd.grad (torch's closure "
                  "protocol), so no derivative flows through the step")


_ASGD_BF16 = ("returns p_new - p with p_new = p * (1 - lambd * eta) - eta * g computed in the "
              "param dtype (torch's in-place bf16 step rounds p_new the same way), so a bf16 "
              "update carries up to one bf16 ulp of the param (|p| * 2**-8)")
_ASGD_F32 = ("eta (which carries lr) is rounded to torch's scalar dtype, float32 under the "
             "default dtype, every step, as torch.optim.ASGD's 0-d state tensors: lr +- 1e-6 is "
             "quantised to float32's spacing 3.7e-9 at 0.05, a 0.4% error in the finite "
             "difference; test_asgd_lr_hypergradient_with_float64_scalars checks it with float64 "
             "scalars (default dtype float64, documented)")


def _lbfgs_extras(params: Any, loss_fn: Callable[[Any], torch.Tensor]) -> dict:
    return {"value": loss_fn(params).detach(), "value_fn": loss_fn}


# Masks and labels are functions of the tree (not literal {"w": ..., "b": ...} trees) so
# that the none_leaves check can run the same sample on the tree without "b".
def _w_mask(params: Any) -> Any:
    return {k: k == "w" for k in params}


def _b_mask(params: Any) -> Any:
    return {k: k == "b" for k in params}


ENTRIES: tuple[Entry, ...] = (
    # ---- optimizer aliases (torch.optim names and defaults) -------------------------
    Entry("sgd", "alias", (
        opt("plain", lambda lr: fo.sgd(lr)),
        opt("momentum_nesterov_wd", lambda lr: fo.sgd(lr, momentum=0.9, nesterov=True, weight_decay=0.01)),
        opt("momentum_dampening_maximize", lambda lr: fo.sgd(lr, momentum=0.8, dampening=0.3, maximize=True)),
    )),
    Entry("adam", "alias", (
        opt("default", lambda lr: fo.adam(lr)),
        opt("amsgrad_wd", lambda lr: fo.adam(lr, betas=(0.8, 0.99), weight_decay=0.01, amsgrad=True)),
        opt("maximize_decoupled", lambda lr: fo.adam(lr, weight_decay=0.1, maximize=True,
                                                     decoupled_weight_decay=True)),
    )),
    Entry("adamw", "alias", (
        opt("default", lambda lr: fo.adamw(lr)),
        opt("amsgrad", lambda lr: fo.adamw(lr, betas=(0.85, 0.995), weight_decay=0.05, amsgrad=True)),
    )),
    Entry("rmsprop", "alias", (
        opt("default", lambda lr: fo.rmsprop(lr)),
        opt("centered_momentum_wd", lambda lr: fo.rmsprop(lr, alpha=0.9, weight_decay=0.01, momentum=0.9,
                                                          centered=True)),
        opt("maximize", lambda lr: fo.rmsprop(lr, momentum=0.5, maximize=True)),
    )),
    Entry("adagrad", "alias", (
        opt("default", lambda lr: fo.adagrad(lr)),
        opt("decay_wd_init", lambda lr: fo.adagrad(lr, lr_decay=0.1, weight_decay=0.01,
                                                   initial_accumulator_value=0.1, maximize=True)),
    )),
    Entry("adadelta", "alias", (
        opt("default", lambda lr: fo.adadelta(lr)),
        opt("rho_wd_maximize", lambda lr: fo.adadelta(lr, rho=0.8, eps=1e-5, weight_decay=0.01, maximize=True)),
    )),
    Entry("adamax", "alias", (
        opt("default", lambda lr: fo.adamax(lr)),
        opt("wd_maximize", lambda lr: fo.adamax(lr, betas=(0.8, 0.99), weight_decay=0.01, maximize=True)),
    )),
    Entry("nadam", "alias", (
        opt("default", lambda lr: fo.nadam(lr)),
        opt("decoupled_wd", lambda lr: fo.nadam(lr, weight_decay=0.05, momentum_decay=0.01,
                                                decoupled_weight_decay=True)),
        opt("wd_maximize", lambda lr: fo.nadam(lr, weight_decay=0.01, maximize=True)),
    )),
    Entry("radam", "alias", (
        # rho_t > 5 only from step 6 with b2=0.999; b2=0.9 crosses it at step 2 (both branches in K=3)
        opt("rectified_early", lambda lr: fo.radam(lr, betas=(0.9, 0.9))),
        opt("decoupled_wd", lambda lr: fo.radam(lr, betas=(0.8, 0.9), weight_decay=0.05,
                                                decoupled_weight_decay=True)),
        opt("wd_maximize", lambda lr: fo.radam(lr, weight_decay=0.01, maximize=True)),
    )),
    Entry("asgd", "alias", (
        opt("default", lambda lr: fo.asgd(lr)),
        # t0=1: the averaging (mu < 1) starts within the K steps
        opt("averaging_wd", lambda lr: fo.asgd(lr, lambd=0.01, alpha=0.5, t0=1.0, weight_decay=0.01)),
    ), exceptions={"lr_grad": _ASGD_F32}, bf16_update_from_params=_ASGD_BF16),
    Entry("rprop", "alias", (
        opt("default", lambda lr: fo.rprop(lr)),
        opt("tight_steps_maximize", lambda lr: fo.rprop(lr, etas=(0.3, 1.5), step_sizes=(1e-3, 0.07),
                                                        maximize=True)),
    )),
    Entry("lamb", "alias", (  # timm's Lamb; more timm samples under scale_by_lamb_moments
        opt("default", lambda lr: fo.lamb(lr)),
        opt("optax_default", lambda lr: fo.optax.lamb(lr)),
        opt("optax_wd_maximize", lambda lr: fo.optax.lamb(lr, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.05,
                                                          maximize=True)),
    )),
    Entry("lars", "alias", (  # timm's Lars; more timm samples under scale_by_lars_trust_ratio
        opt("default", lambda lr: fo.lars(lr, momentum=0.9, weight_decay=0.01)),
        opt("optax_default", lambda lr: fo.optax.lars(lr)),
        opt("optax_wd_nesterov_eps", lambda lr: fo.optax.lars(lr, momentum=0.8, weight_decay=0.01, trust_coefficient=0.5,
                                                  eps=1e-3, nesterov=True)),
    )),
    Entry("sparse_adam", "alias", (
        opt("default", lambda lr: fo.sparse_adam(lr)),
        opt("betas_maximize", lambda lr: fo.sparse_adam(lr, betas=(0.8, 0.99), eps=1e-6, maximize=True)),
    ), grad_form=all_rows),
    Entry("lbfgs", "alias", (
        opt("fixed_step", lambda lr: fo.lbfgs(10 * lr, max_iter=3, history_size=2)),
        opt("strong_wolfe", lambda lr: fo.lbfgs(20 * lr, max_iter=4, history_size=3, line_search_fn="strong_wolfe")),
    ), exceptions={
        "lr_grad": _LBFGS_NO_GRAD, "param_grad": _LBFGS_NO_GRAD, "vmap_hypergrad": _LBFGS_NO_GRAD,
        "second_order": _LBFGS_NO_GRAD,
        "vmap_batch": _LBFGS_HOST, "vmap_shared": _LBFGS_HOST, "compile": _LBFGS_HOST,
        "bf16": ("bit-identical to torch.optim.LBFGS in bf16 (test_lbfgs_bf16_matches_torch checks "
                 "that and the bf16 dtype), but not close to the float32 run: the quasi-Newton "
                 "iterations re-evaluate bf16 gradients and difference them (y = g_new - g_old), "
                 "which amplifies bf16 rounding to ~10% of the step, in torch's algorithm too"),
        "none_leaves": ("torch.optim.LBFGS semantics: a None gradient counts as zeros and the "
                        "step couples all params through one flat vector, so a None leaf gets a "
                        "(non-None) update and removing it changes the others"),
    }, extras=_lbfgs_extras),

    # ---- transforms ---------------------------------------------------------------
    Entry("identity", "transform", (tx("identity", fo.identity),)),
    Entry("set_to_zero", "transform", (tx("set_to_zero", fo.set_to_zero),)),
    Entry("stateless", "transform", (
        tx("halve_plus_decay", lambda: fo.stateless(
            lambda u, p: fo.tree.add_scale(fo.tree.scale(u, 0.5), 0.01, p) if p is not None
            else fo.tree.scale(u, 0.5))),
    )),
    Entry("scale", "transform", (
        tx("float", lambda: fo.scale(-0.5)),
        tx("tensor", lambda: fo.scale(torch.tensor(0.25, dtype=torch.float64))),
    )),
    Entry("scale_by_learning_rate", "transform", (
        opt("constant", lambda lr: fo.scale_by_learning_rate(lr)),
        opt("schedule_no_flip", lambda lr: fo.chain(
            fo.scale_by_learning_rate(fo.linear_schedule(1.0, 0.5, 4), flip_sign=False),
            fo.scale_by_learning_rate(lr))),
    )),
    Entry("scale_by_schedule", "transform", (
        tx("cosine", lambda: fo.scale_by_schedule(fo.cosine_decay_schedule(1.0, 5, alpha=0.1))),
        tx("warmup_exp", lambda: fo.scale_by_schedule(
            fo.warmup_exponential_decay_schedule(0.1, 1.0, 2, 3, 0.5))),
    )),
    Entry("scale_by_sign", "transform", (tx("sign", fo.scale_by_sign),)),
    Entry("add_decayed_weights", "transform", (
        tx("all", lambda: fo.add_decayed_weights(0.1)),
        tx("masked", lambda: fo.add_decayed_weights(0.1, mask=_w_mask)),
    )),
    Entry("clip", "transform", (tx("clip", lambda: fo.clip(0.3)),)),
    Entry("clip_by_global_norm", "transform", (tx("clip", lambda: fo.clip_by_global_norm(0.5)),)),
    Entry("trace", "transform", (
        tx("heavy_ball", lambda: fo.trace(0.9)),
        tx("nesterov_dampening", lambda: fo.trace(0.8, nesterov=True, dampening=0.2)),
    )),
    Entry("ema", "transform", (
        tx("debiased", lambda: fo.ema(0.9)),
        tx("raw", lambda: fo.ema(0.8, debias=False)),
    )),
    Entry("scale_by_adam", "transform", (
        tx("default", fo.scale_by_adam),
        tx("eps_root_nesterov", lambda: fo.scale_by_adam(b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8,
                                                         nesterov=True)),
    )),
    Entry("scale_by_rms", "transform", (
        tx("default", fo.scale_by_rms),
        # centered + bias_correction: eps inside the root (with eps outside, the first step's
        # centered moment is exactly 0 up to rounding: u = g / eps, or NaN when it rounds < 0)
        # (and with eps inside, the first step is g / sqrt(eps): eps=1 keeps it a sane step,
        # and the bf16 cancellation in nu - mu**2, a few % of g**2, small next to it)
        tx("centered_bias_corrected", lambda: fo.scale_by_rms(0.9, eps=1.0, bias_correction=True,
                                                              centered=True)),
        tx("torch_eps_init_scale", lambda: fo.scale_by_rms(0.8, eps=1e-6, initial_scale=0.5,
                                                           eps_in_sqrt=False)),
    )),
    Entry("scale_by_stddev", "transform", (
        tx("default", lambda: fo.scale_by_stddev(eps=1e-6)),
        tx("init_scale", lambda: fo.scale_by_stddev(0.8, eps=1e-6, initial_scale=1.0, eps_in_sqrt=False)),
    )),
    Entry("scale_by_rss", "transform", (
        tx("default", fo.scale_by_rss),
        tx("torch_style", lambda: fo.scale_by_rss(0.0, eps=1e-10, eps_in_sqrt=False, lr_decay=0.1)),
    )),
    Entry("scale_by_adadelta", "transform", (tx("default", lambda: fo.scale_by_adadelta(0.8, eps=1e-5)),)),
    Entry("scale_by_adamax", "transform", (tx("default", lambda: fo.scale_by_adamax(0.8, 0.99)),)),
    Entry("scale_by_nadam", "transform", (tx("default", lambda: fo.scale_by_nadam(momentum_decay=0.01)),)),
    Entry("scale_by_radam", "transform", (
        tx("rectified_early", lambda: fo.scale_by_radam(b2=0.9)),
        tx("nesterov_threshold", lambda: fo.scale_by_radam(b1=0.8, b2=0.9, threshold=3.0, nesterov=True)),
    )),
    Entry("scale_by_asgd", "transform", (
        # it returns p_new - p (the step size included) and must come last: lr is its own
        opt("t0_1", lambda lr: fo.scale_by_asgd(lr, lambd=0.01, alpha=0.5, t0=1.0)),
    ), exceptions={"lr_grad": _ASGD_F32}, bf16_update_from_params=_ASGD_BF16),
    Entry("scale_by_rprop", "transform", (
        # lr is its initial step size; the output points along the gradient (negated to descend)
        opt("descend", lambda lr: fo.chain(fo.scale_by_rprop(lr, 0.4, 1.3, 1e-3, 0.08), fo.scale(-1.0))),
    )),
    Entry("scale_by_sparse_adam", "transform", (
        tx("default", lambda: fo.scale_by_sparse_adam(0.8, 0.99, 1e-6)),
    ), grad_form=all_rows),
    Entry("adaptive_grad_clip", "transform", (
        tx("unitwise", lambda: fo.adaptive_grad_clip(0.05)),
        tx("axis0", lambda: fo.adaptive_grad_clip(0.1, eps=1e-2, axis=0)),
    )),
    Entry("add_noise", "transform", (
        tx("seeded", lambda: fo.add_noise(0.01, 0.55, key=3)),
    ), exceptions={
        "none_leaves": ("the noise stream of a leaf is keyed by its position in the full tree "
                        "(sel.index), so dropping leaf 'b' moves 'w' from position 1 to 0 and "
                        "gives it other noise by design; test_add_noise_none_leaf_keeps_positions "
                        "checks the None leaf against the same tree with 'b' present instead"),
    }),
    Entry("centralize", "transform", (tx("centralize", fo.centralize),)),
    Entry("clip_by_block_rms", "transform", (tx("block_rms", lambda: fo.clip_by_block_rms(0.3)),)),
    Entry("keep_params_nonnegative", "transform", (
        tx("nonneg", fo.keep_params_nonnegative, last=True),
    )),
    Entry("scale_by_trust_ratio", "transform", (
        tx("default", fo.scale_by_trust_ratio),
        tx("coef_eps", lambda: fo.scale_by_trust_ratio(min_norm=0.1, trust_coefficient=0.5, eps=1e-3)),
    )),
    Entry("zero_nans", "transform", (tx("zero_nans", fo.zero_nans),)),

    # ---- combinators and wrappers --------------------------------------------------
    Entry("chain", "wrapper", (
        opt("clip_adam_wd", lambda lr: fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(),
                                                fo.add_decayed_weights(0.01), fo.scale_by_learning_rate(lr))),
    )),
    Entry("named_chain", "wrapper", (
        opt("clip_sgd", lambda lr: fo.named_chain(("clip", fo.clip(0.5)),
                                                  ("sgd", fo.sgd(lr, momentum=0.9)))),
    )),
    Entry("masked", "wrapper", (
        tx("adam_on_w", lambda: fo.masked(fo.scale_by_adam(), _w_mask)),
        tx("glob_trace", lambda: fo.masked(fo.trace(0.9), fo.mask_by_name("b", allow_unmatched=True))),
    )),
    Entry("freeze", "wrapper", (
        opt("sgd_momentum_freeze_b", lambda lr: fo.chain(fo.sgd(lr, momentum=0.9),
                                                         fo.freeze(_b_mask))),
    )),
    Entry("partition", "wrapper", (
        opt("adam_sgd", lambda lr: fo.partition({"a": fo.adam(lr), "s": fo.sgd(lr, momentum=0.9)},
                                                lambda p: {k: "a" if k == "w" else "s" for k in p})),
    )),
    Entry("multi_transform", "wrapper", (
        opt("by_name", lambda lr: fo.multi_transform(
            {"decay": fo.adamw(lr, weight_decay=0.1), "plain": fo.rmsprop(lr, momentum=0.5)},
            fo.label_by_name([("w", "decay")], default="plain"))),
    )),
    Entry("selective_transform", "wrapper", (
        opt("adam_freeze_b", lambda lr: fo.selective_transform(fo.adam(lr), freeze_mask=_b_mask)),
    )),
    Entry("inject_hyperparams", "wrapper", (
        opt("adam_f64", lambda lr: fo.inject_hyperparams(fo.adam, hyperparam_dtype=torch.float64)(
            lr=lr, betas=(0.85, 0.99), weight_decay=0.01)),
        opt("sgd_f32_schedule", lambda lr: fo.inject_hyperparams(fo.sgd)(
            lr=lr, momentum=0.9, weight_decay=fo.linear_schedule(0.0, 0.1, 3)),
            lr_grad=("hyperparameters are stored in float32 by default (documented; optax #1414 "
                     "rationale): lr +- 1e-6 is quantised to float32's spacing 3.7e-9 at 0.05, a "
                     "0.4% error in the finite difference; the float64 sample adam_f64 checks "
                     "the hypergradient")),
    )),
    Entry("MultiSteps", "wrapper", (
        opt("adam_k2", lambda lr: fo.MultiSteps(fo.adam(lr), every_k_schedule=2).gradient_transformation()),
        opt("sgd_k2_sum_skip", lambda lr: fo.MultiSteps(
            fo.sgd(lr, momentum=0.9), 2, use_grad_mean=False,
            should_skip_update_fn=fo.skip_not_finite).gradient_transformation()),
        opt("rms_schedule_skip_large", lambda lr: fo.MultiSteps(
            fo.rmsprop(lr), lambda step: 1 + (step >= 1).to(torch.int32),
            should_skip_update_fn=functools.partial(fo.skip_large_updates, max_squared_norm=1e6),
            ).gradient_transformation()),
    )),
    Entry("apply_if_finite", "wrapper", (
        opt("adam", lambda lr: fo.apply_if_finite(fo.adam(lr, amsgrad=True), max_consecutive_errors=2)),
    )),
    Entry("conditionally_transform", "wrapper", (
        tx("adam_from_step1", lambda: fo.conditionally_transform(fo.scale_by_adam(), lambda step: step >= 1)),
    )),
    Entry("conditionally_mask", "wrapper", (
        opt("sgd_odd_steps", lambda lr: fo.conditionally_mask(fo.sgd(lr, momentum=0.9),
                                                              lambda step: step % 2 == 0)),
    )),
    Entry("lookahead", "wrapper", (
        opt("sgd_momentum", lambda lr: fo.lookahead(fo.sgd(lr, momentum=0.9), sync_period=2, slow_step_size=0.5)),
        opt("adam_reset_first_sync", lambda lr: fo.lookahead(fo.adam(lr), sync_period=2, slow_step_size=0.3,
                                                             reset_state=True, slow_init="first_sync")),
    ), bf16_update_from_params=("at a sync step the update is target - p (lerp of slow and fast "
                                "weights minus the params), computed in the param dtype: a bf16 "
                                "update carries up to one bf16 ulp of the param (|p| * 2**-8)")),
    Entry("param_ema", "wrapper", (
        opt("debias", lambda lr: fo.chain(fo.sgd(lr, momentum=0.9), fo.param_ema(0.9, debias=True))),
        opt("warmup_after1", lambda lr: fo.chain(fo.adam(lr), fo.param_ema(0.95, use_warmup=True,
                                                                           update_after_step=1))),
    )),
    Entry("snapshot", "wrapper", (
        opt("grad_norm", lambda lr: fo.chain(fo.snapshot("grad_norm", fo.tree.global_norm),
                                             fo.clip_by_global_norm(1.0), fo.sgd(lr, momentum=0.9))),
    )),
    Entry("monitor", "wrapper", (
        opt("norms", lambda lr: fo.chain(fo.monitor({"norm": fo.tree.global_norm,
                                                     "max": lambda u: fo.tree.norm(u, ord="inf")}),
                                         fo.adam(lr))),
    )),
    Entry("measure_with_ema", "wrapper", (
        # its output is a measurement, not an update: it is run the way it is meant to be, in monitor
        opt("in_monitor", lambda lr: fo.chain(
            fo.monitor({"ema": fo.measure_with_ema(fo.tree.global_norm, 0.9)}), fo.sgd(lr, momentum=0.5))),
    )),
)


# ---- every other export, with its kind ------------------------------------------
_STATE = "state"  # a NamedTuple (or other) type held in optimizer state
_SCHEDULE = "schedule"  # a schedule factory: returns count -> value
_UTILITY = "utility"  # a function that is not a transform factory
_MODULE = "module"  # a submodule
_TYPE = "type"  # a class or typing alias used in signatures
_DATA = "data"  # a data type passed through update (not state)
_MARKER = "marker"  # takes a transform and returns that same transform, annotated

NON_TRANSFORMS: Mapping[str, str] = {
    # submodules (those in __all__ and those merely visible as attributes)
    "kernels": _MODULE, "segments": _MODULE, "tree": _MODULE, "linesearch": _MODULE, "wrappers": _MODULE,
    "aliases": _MODULE, "base": _MODULE, "combine": _MODULE, "hyperparams": _MODULE,
    "schedules": _MODULE, "steps": _MODULE, "transforms": _MODULE, "updates": _MODULE,
    # types and typing aliases
    "GradientTransformation": _TYPE, "Params": _TYPE, "Updates": _TYPE, "OptState": _TYPE,
    "Schedule": _TYPE, "ScalarOrSchedule": _TYPE,
    "SparseRows": _DATA,
    # state types
    "EmptyState": _STATE, "ScaleByScheduleState": _STATE, "ClipByGlobalNormState": _STATE,
    "TraceState": _STATE, "EmaState": _STATE, "ScaleByAdamState": _STATE, "ScaleByRmsState": _STATE,
    "ScaleByRssState": _STATE, "ScaleByAdaDeltaState": _STATE, "ScaleByAdamaxState": _STATE,
    "ScaleByNadamState": _STATE, "ScaleByAsgdState": _STATE, "ScaleByRpropState": _STATE,
    "LBFGSState": _STATE, "ScaleBySparseAdamState": _STATE, "AddNoiseState": _STATE,
    "NonNegativeParamsState": _STATE, "ZeroNansState": _STATE, "ApplyIfFiniteState": _STATE,
    "ConditionallyMaskState": _STATE, "ConditionallyTransformState": _STATE,
    "InjectHyperparamsState": _STATE, "LookaheadState": _STATE, "MaskedState": _STATE,
    "MonitorState": _STATE, "MultiStepsState": _STATE, "MultiTransformState": _STATE,
    "ParamEmaState": _STATE, "PartitionState": _STATE, "SnapshotState": _STATE,
    # utilities
    "apply_updates": _UTILITY, "apply_updates_": _UTILITY, "mark_elementwise": _MARKER,
    "is_elementwise": _UTILITY, "declare": _MARKER, "needs": _UTILITY, "Needs": _TYPE,
    "leaf_names": _UTILITY, "mask_by_name": _UTILITY,
    "label_by_name": _UTILITY, "ema_params": _UTILITY, "lookahead_slow_params": _UTILITY,
    "skip_not_finite": _UTILITY, "skip_large_updates": _UTILITY,
    # implicit differentiation (functional_optim.implicit): solvers and decorators, no transforms
    "implicit": _MODULE, "custom_root": _UTILITY, "stationary_point": _UTILITY, "hvp": _UTILITY,
    "solve_cg": _UTILITY, "solve_normal_cg": _UTILITY,
    # schedules
    "constant_schedule": _SCHEDULE, "linear_schedule": _SCHEDULE, "polynomial_schedule": _SCHEDULE,
    "exponential_decay": _SCHEDULE, "piecewise_constant_schedule": _SCHEDULE,
    "piecewise_interpolate_schedule": _SCHEDULE, "cosine_decay_schedule": _SCHEDULE,
    "warmup_cosine_decay_schedule": _SCHEDULE, "sgdr_schedule": _SCHEDULE,
    "warmup_constant_schedule": _SCHEDULE, "warmup_exponential_decay_schedule": _SCHEDULE,
    "linear_onecycle_schedule": _SCHEDULE, "cosine_onecycle_schedule": _SCHEDULE,
    "join_schedules": _SCHEDULE, "warmup_cosine_schedule": _SCHEDULE,
    "linear_range_schedule": _SCHEDULE, "exponential_range_schedule": _SCHEDULE,
}


# ---- MONAI's Novograd (fo.novograd, fo.monai): its entries and exports, in one block ----
ENTRIES += (
    Entry("novograd", "alias", (
        opt("default", lambda lr: fo.novograd(lr)),
        opt("averaging_amsgrad_wd", lambda lr: fo.novograd(lr, betas=(0.8, 0.9), weight_decay=0.01,
                                                           grad_averaging=True, amsgrad=True)),
    )),
    Entry("scale_by_novograd", "transform", (
        tx("default", fo.scale_by_novograd),
        tx("amsgrad", lambda: fo.scale_by_novograd(0.9, eps=1e-6, amsgrad=True)),
    )),
)
NON_TRANSFORMS = {**NON_TRANSFORMS, "monai": _MODULE, "ScaleByNovogradState": _STATE}


# ---- timm's Lamb, Lars, NvNovoGrad (fo.timm.lamb/lars/nvnovograd, fo.nvnovograd) and their pieces ----
# fo.timm.lamb and fo.timm.lars are also fo.lamb/fo.lars (entries above); more of their samples run
# through every check as samples of the entries of the transforms they are built from.
ENTRIES += (
    Entry("nvnovograd", "alias", (
        opt("default", lambda lr: fo.nvnovograd(lr)),
        opt("averaging_amsgrad_coupled", lambda lr: fo.nvnovograd(lr, betas=(0.8, 0.9), weight_decay=0.01,
                                                                  grad_averaging=True, amsgrad=True)),
        opt("decoupled_corrected", lambda lr: fo.nvnovograd(lr, weight_decay=0.05, amsgrad=True,
                                                            decoupled_decay=True, corrected_weight_decay=True,
                                                            max_lr_snapshot=0.1)),
    )),
    Entry("divide_by_global_norm", "transform", (tx("clip", lambda: fo.divide_by_global_norm(0.5)),)),
    Entry("scale_by_lamb_moments", "transform", (
        tx("default", fo.scale_by_lamb_moments),
        tx("no_bias_correction_no_averaging", lambda: fo.scale_by_lamb_moments(
            0.8, 0.99, 1e-4, bias_correction=False, grad_averaging=False)),
        opt("timm_lamb_default", lambda lr: fo.timm.lamb(lr)),
        opt("timm_lamb_always_adapt_nowd", lambda lr: fo.timm.lamb(lr, weight_decay=0.0, always_adapt=True,
                                                                   bias_correction=False, max_grad_norm=None)),
        opt("timm_lamb_caution_decoupled_corrected", lambda lr: fo.timm.lamb(
            lr, weight_decay=0.05, trust_clip=True, caution=True, decoupled_decay=True,
            corrected_weight_decay=True, max_lr_snapshot=0.1, max_grad_norm=0.5)),
    )),
    Entry("scale_by_lamb_trust_ratio", "transform", (
        tx("default", fo.scale_by_lamb_trust_ratio),
        tx("clip_decayed_gated", lambda: fo.scale_by_lamb_trust_ratio(
            True, param_decay=0.01, gate=torch.tensor(0.1, dtype=torch.float64))),
    )),
    Entry("scale_by_lars_trust_ratio", "transform", (
        tx("wd", lambda: fo.scale_by_lars_trust_ratio(trust_coeff=0.5, weight_decay=0.01)),
        opt("larc", lambda lr: fo.chain(fo.scale_by_lars_trust_ratio(0.5, 1e-3, 0.01, True, lr),
                                        fo.scale_by_learning_rate(lr))),
        opt("timm_lars_dampening_always_adapt", lambda lr: fo.timm.lars(lr, momentum=0.8, dampening=0.1,
                                                                        always_adapt=True, trust_coeff=0.5)),
        opt("timm_lars_nesterov_larc", lambda lr: fo.timm.lars(lr, momentum=0.9, weight_decay=0.01, nesterov=True,
                                                               trust_coeff=0.5, trust_clip=True)),
    )),
    Entry("add_decoupled_weight_decay", "transform", (
        opt("after_adam", lambda lr: fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(lr),
                                              fo.add_decoupled_weight_decay(0.1, lr))),
        opt("corrected", lambda lr: fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(lr),
                                             fo.add_decoupled_weight_decay(0.1, lr, max_learning_rate=0.1))),
    )),
)
NON_TRANSFORMS = {**NON_TRANSFORMS, "timm": _MODULE, "optax": _MODULE, "ScaleByLambMomentsState": _STATE}


# ---- timm's Adam family (fo.adabelief/adamp/sgdp, fo.timm.*_legacy, fo.timm.rmsprop_tf), caution ----
# The fo.timm-only aliases run through every check as samples of the entries they are built from.
ENTRIES += (
    Entry("cautious", "wrapper", (
        tx("trace", lambda: fo.cautious(fo.trace(0.9))),
        opt("timm_adamw_legacy_caution_amsgrad", lambda lr: fo.timm.adamw_legacy(
            lr, weight_decay=0.05, amsgrad=True, caution=True)),
        opt("timm_rmsprop_tf_caution_centered", lambda lr: fo.timm.rmsprop_tf(
            lr, momentum=0.9, centered=True, caution=True, weight_decay=0.01)),
        opt("timm_rmsprop_tf_caution_decoupled_corrected", lambda lr: fo.timm.rmsprop_tf(
            lr, momentum=0.5, lr_in_momentum=False, caution=True, decoupled_decay=True,
            corrected_weight_decay=True, weight_decay=0.05, max_lr_snapshot=0.1)),
    )),
    Entry("scale_invariant_projection", "wrapper", (
        tx("adam_decay", lambda: fo.scale_invariant_projection(fo.scale_by_adam(), weight_decay=0.1)),
        tx("trace_caution", lambda: fo.scale_invariant_projection(fo.trace(0.9), delta=0.5, weight_decay=0.1,
                                                                  momentum=0.9, caution=True),
           bf16=("the spherical caution mask compares the signs of two tangent vectors that are each a "
                 "difference of O(1) terms (the momentum minus its radial part, the gradient minus its "
                 "radial part): bf16 rounding flips signs near zero and the mask's 1/mean rescaling "
                 "amplifies a flip into an O(1) change on this small matrix; the projection itself is "
                 "checked in bf16 by adam_decay and by adamp's nesterov_caution_wd")),
    )),
    Entry("scale_by_belief", "transform", (
        tx("default", fo.scale_by_belief),
        tx("amsgrad_unrectified", lambda: fo.scale_by_belief(0.8, 0.99, 1e-10, amsgrad=True, rectify=False)),
        tx("rectified_no_sgd", lambda: fo.scale_by_belief(0.9, 0.9, degenerated_to_sgd=False)),
    )),
    Entry("scale_by_timm_adam", "transform", (
        tx("default", fo.scale_by_timm_adam),
        tx("amsgrad_nesterov_clipped", lambda: fo.scale_by_timm_adam(0.8, 0.99, amsgrad=True, nesterov=True,
                                                                      clipping_threshold=0.5)),
        opt("timm_adamw_legacy_maximize_clipped", lambda lr: fo.timm.adamw_legacy(
            lr, maximize=True, clipping_threshold=0.5, corrected_weight_decay=True, max_lr_snapshot=0.1)),
    )),
    Entry("scale_by_nadam_legacy", "transform", (
        tx("default", fo.scale_by_nadam_legacy),
        opt("timm_nadam_legacy_wd", lambda lr: fo.timm.nadam_legacy(lr, betas=(0.8, 0.99), weight_decay=0.01,
                                                                    schedule_decay=0.01)),
    )),
    Entry("trace_from_zero", "transform", (
        tx("dampened_nesterov", lambda: fo.trace_from_zero(0.9, dampening=0.1, nesterov=True)),
    )),
    Entry("adabelief", "alias", (
        opt("default", lambda lr: fo.adabelief(lr)),
        opt("coupled_amsgrad_unrectified", lambda lr: fo.adabelief(lr, weight_decay=0.01, amsgrad=True,
                                                                   decoupled_decay=False, rectify=False)),
        opt("fixed_decay_no_sgd", lambda lr: fo.adabelief(lr, betas=(0.9, 0.9), weight_decay=0.01,
                                                          fixed_decay=True, degenerated_to_sgd=False)),
        opt("timm_radam_legacy_wd", lambda lr: fo.timm.radam_legacy(lr, betas=(0.9, 0.9), weight_decay=0.01)),
    )),
    Entry("adamp", "alias", (
        opt("default", lambda lr: fo.adamp(lr)),
        opt("nesterov_caution_wd", lambda lr: fo.adamp(lr, weight_decay=0.1, nesterov=True, caution=True,
                                                       delta=0.5)),
    )),
    Entry("sgdp", "alias", (
        opt("momentum_wd", lambda lr: fo.sgdp(lr, momentum=0.9, weight_decay=0.1)),
        opt("nesterov_dampening_caution", lambda lr: fo.sgdp(lr, momentum=0.9, dampening=0.1, nesterov=True,
                                                             weight_decay=0.01, caution=True, delta=0.5)),
    )),
)
NON_TRANSFORMS = {**NON_TRANSFORMS, "ScaleByBeliefState": _STATE, "ScaleByNadamLegacyState": _STATE}


# ---- timm's MADGRAD, Adafactor, Adahessian (fo.madgrad, fo.adahessian, fo.timm.adafactor) and pieces ----
def _with_hessian(tx: fo.GradientTransformation) -> fo.GradientTransformation:
    """Adahessian with its required ``hessian=`` supplied inside the sample: g * g + 0.01 (a
    pure, differentiable diagonal curvature proxy). The vmap, compile and None-leaf checks
    call ``update`` without extras, and the exception budget is spent, so the estimate is
    made here; the real Hutchinson estimate (Rademacher z, z * Hz) against timm's own
    trajectories is tested in tests/test_timm_misc.py."""
    import optree

    def update_fn(updates, state, params=None, **extra):
        extra.pop("hessian", None)
        hess = optree.tree_map(lambda g: None if g is None else g * g + 0.01, updates, none_is_leaf=True)
        return tx.update(updates, state, params, hessian=hess, **extra)

    return fo.declare(fo.GradientTransformation(tx.init, update_fn), fo.needs(tx))


_MADGRAD_BF16 = ("returns p_new - p, with MADGRAD's new params (a dual average from x0) computed in the "
                 "param dtype as timm's in-place bf16 step rounds them, so a bf16 update carries up to "
                 "one bf16 ulp of the param (|p| * 2**-8)")

ENTRIES += (
    Entry("madgrad", "alias", (
        opt("default", lambda lr: fo.madgrad(lr)),
        opt("no_momentum_decoupled", lambda lr: fo.madgrad(lr, momentum=0.0, weight_decay=0.01, decoupled_decay=True)),
        opt("coupled_wd", lambda lr: fo.madgrad(lr, momentum=0.5, weight_decay=0.01, eps=1e-4)),
    ), bf16_update_from_params=_MADGRAD_BF16),
    Entry("scale_by_madgrad", "transform", (
        # the learning rate is its own (it enters the dual averages); the output is the whole step
        opt("momentum", lambda lr: fo.scale_by_madgrad(lr, momentum=0.8, weight_decay=0.01, decoupled_decay=True)),
    ), bf16_update_from_params=_MADGRAD_BF16),
    Entry("scale_by_factored_rms", "transform", (
        tx("factored", lambda: fo.scale_by_factored_rms(min_dim_size_to_factor=1)),
        tx("last_two", lambda: fo.scale_by_factored_rms(-0.5, eps=1e-20, min_dim_size_to_factor=1,
                                                        factor_dims="last_two")),
        # fo.timm.adafactor (not a top-level name: fo.adafactor is torch.optim's) runs here
        opt("timm_adafactor", lambda lr: fo.timm.adafactor(lr=lr, min_dim_size_to_factor=1, betas=(0.9, 0.999),
                                                           weight_decay=0.01, clip_threshold=0.5)),
        opt("timm_adafactor_relative_caution", lambda lr: fo.chain(
            fo.timm.adafactor(min_dim_size_to_factor=1, betas=(0.8, 0.999), caution=True, weight_decay=0.01),
            fo.scale(lr / LR))),
    )),
    Entry("scale_by_relative_step_size", "transform", (
        tx("relative", fo.scale_by_relative_step_size),
        # (warmup_init's 1e-6 * t steps move the loss by ~1e-13: a finite difference cannot check them)
        tx("no_scale", lambda: fo.scale_by_relative_step_size(scale_parameter=False)),
    )),
    Entry("add_relative_step_decayed_weights", "transform", (
        tx("relative", lambda: fo.add_relative_step_decayed_weights(0.1)),
        tx("external", lambda: fo.add_relative_step_decayed_weights(0.1, lr=0.3)),
    )),
    Entry("adahessian", "alias", (
        opt("default", lambda lr: _with_hessian(fo.adahessian(lr))),
        opt("power_each2_wd", lambda lr: _with_hessian(fo.adahessian(lr, betas=(0.8, 0.99), weight_decay=0.01,
                                                                     hessian_power=0.5, update_each=2))),
    )),
    Entry("scale_by_adahessian", "transform", (
        tx("default", lambda: _with_hessian(fo.scale_by_adahessian())),
        tx("avg_conv_each2", lambda: _with_hessian(fo.scale_by_adahessian(0.8, 0.99, hessian_power=0.7, update_each=2,
                                                                          avg_conv_kernel=True))),
    )),
)
NON_TRANSFORMS = {**NON_TRANSFORMS, "ScaleByMadgradState": _STATE, "ScaleByFactoredRmsState": _STATE,
                  "ScaleByRelativeStepSizeState": _STATE, "AddRelativeStepDecayedWeightsState": _STATE,
                  "ScaleByAdahessianState": _STATE}


# ---- torch.optim's Adafactor and Muon (fo.adafactor, fo.muon) and their pieces ----
def _matrix_labels(params: Any) -> Any:
    return {k: "matrix" if k == "w" else "other" for k in params}


def _muon_with_adamw(lr: Any, **kw: Any) -> fo.GradientTransformation:
    """Muon on the matrix ``w``, AdamW on the rest (Muon refuses non-matrices, as torch's).
    ``ns_dtype=None`` runs the Newton–Schulz iteration in the params' float64: bfloat16's
    rounding (torch's choice, the default) makes the step piecewise constant at the 1e-6
    scale of the finite differences and batched products differ from unbatched ones by
    bfloat16 ulps; its bit-for-bit equality with torch is tested in
    tests/test_adafactor_muon.py."""
    return fo.partition({"matrix": fo.muon(lr, ns_dtype=None, **kw), "other": fo.adamw(lr)}, _matrix_labels)


ENTRIES += (
    Entry("adafactor", "alias", (
        opt("default", lambda lr: fo.adafactor(lr)),
        opt("wd_maximize_eps", lambda lr: fo.adafactor(lr, beta2_decay=-0.5, eps=(1e-20, 1e-2), d=1.5,
                                                        weight_decay=0.1, maximize=True)),
    )),
    Entry("scale_by_factored_variance", "transform", (
        tx("torch", fo.scale_by_factored_variance),
        tx("timm_dims_eps", lambda: fo.scale_by_factored_variance(-0.5, 1e-20, factor_dims="timm",
                                                                  min_dim_size_to_factor=1)),
    )),
    Entry("muon", "alias", (
        opt("with_adamw", lambda lr: _muon_with_adamw(lr)),
        opt("plain_momentum_match_rms", lambda lr: _muon_with_adamw(lr, nesterov=False, weight_decay=0.0,
                                                                    adjust_lr_fn="match_rms_adamw")),
    )),
    Entry("orthogonalize_newton_schulz", "transform", (
        tx("float64", lambda: fo.masked(fo.orthogonalize_newton_schulz(dtype=None), _w_mask)),
        tx("cubic_eps", lambda: fo.masked(fo.orthogonalize_newton_schulz((1.5, -0.5, 0.0), 4, 1e-3, dtype=None),
                                          _w_mask)),
    )),
    Entry("scale_by_shape_adjusted_lr", "transform", (
        opt("original", lambda lr: fo.partition({"matrix": fo.chain(fo.scale_by_shape_adjusted_lr(lr), fo.scale(-1.0)),
                                                 "other": fo.scale_by_learning_rate(lr)}, _matrix_labels)),
        opt("match_rms_adamw", lambda lr: fo.partition({
            "matrix": fo.chain(fo.scale_by_shape_adjusted_lr(lr, "match_rms_adamw"), fo.scale(-1.0)),
            "other": fo.scale_by_learning_rate(lr)}, _matrix_labels)),
    )),
)
NON_TRANSFORMS = {**NON_TRANSFORMS, "ScaleByFactoredVarianceState": _STATE}


# ---- timm's Lion (fo.lion = fo.timm.lion) and its transform ----
ENTRIES += (
    Entry("scale_by_lion", "transform", (
        tx("betas_fp32_mu", lambda: fo.scale_by_lion(0.5, 0.9, mu_dtype=torch.float32)),
    )),
    Entry("lion", "alias", (
        opt("wd_maximize", lambda lr: fo.lion(lr, betas=(0.8, 0.95), weight_decay=0.1, maximize=True)),
        opt("caution_corrected", lambda lr: fo.lion(lr, weight_decay=0.1, caution=True, corrected_weight_decay=True,
                                                    max_lr_snapshot=0.1)),
    )),
)
NON_TRANSFORMS = {**NON_TRANSFORMS, "ScaleByLionState": _STATE}


# ---- timm's AdafactorBigVision (fo.timm.adafactor_big_vision) and its pieces ----
# The momentum is kept in float64 here: bfloat16 (timm's default, tested bit for bit in
# tests/test_timm_muon_adafactorbv.py) makes the step piecewise constant at the 1e-6 scale
# of the finite differences. min_dim_size_to_factor=2 factors the (3, 2) param "w".
ENTRIES += (
    Entry("scale_by_factored_rms_big_vision", "transform", (
        opt("timm_adafactor_big_vision", lambda lr: fo.timm.adafactor_big_vision(
            lr, min_dim_size_to_factor=2, momentum_dtype=torch.float64, weight_decay=0.1)),
        opt("timm_adafactor_big_vision_caution_clip_unscaled_corrected", lambda lr: fo.timm.adafactor_big_vision(
            lr, min_dim_size_to_factor=2, momentum_dtype=torch.float64, weight_decay=0.01, caution=True,
            clipping_threshold=0.5, unscaled_wd=True, corrected_weight_decay=True, max_lr_snapshot=0.1,
            decay_offset=1)),
        tx("offset_cap_eps", lambda: fo.scale_by_factored_rms_big_vision(0.5, 2, 0.9, 1e-20)),
        # last: the one compiled (the whole alias takes 17 s to compile here)
        tx("factored", lambda: fo.scale_by_factored_rms_big_vision(min_dim_size_to_factor=2)),
    )),
    Entry("ema_in_dtype", "transform", (
        tx("own_dtype", lambda: fo.ema_in_dtype(0.9, None)),
        tx("float64", lambda: fo.ema_in_dtype(0.8, torch.float64)),
    )),
)
NON_TRANSFORMS = {**NON_TRANSFORMS, "ScaleByFactoredRmsBigVisionState": _STATE, "big_vision_factor_dims": _UTILITY}


# ---- timm's Muon / AdaMuon (fo.timm.muon; fo.muon is torch's) and their pieces ----
# The iteration runs in float64 (ns_dtype=None / dtype=None): bfloat16 (timm's, tested bit for
# bit in tests/test_timm_muon_adafactorbv.py) makes the step piecewise constant at the scale
# of the finite differences. The (3, 2) "w" is too small for timm's shape routing (both
# sides >= 4): it is routed to Muon by a group flag, the rest to the AdamW fallback.
def _timm_muon(lr: Any, **kw: Any) -> fo.GradientTransformation:
    return fo.partition({"matrix": fo.timm.muon(lr, use_muon=True, ns_dtype=None, **kw),
                         "other": fo.timm.muon(lr, use_fallback=True, **kw)}, _matrix_labels)


ENTRIES += (
    Entry("orthogonalize_newton_schulz_timm", "transform", (
        opt("timm_muon", lambda lr: _timm_muon(lr, weight_decay=0.1)),
        opt("timm_nadamuon", lambda lr: _timm_muon(lr, algo="adamuon", nesterov=True, weight_decay=0.01,
                                                   fallback_lr_scale=0.5)),
        tx("polar_express_scaled_eps", lambda: fo.masked(fo.orthogonalize_newton_schulz_timm(
            "polar_express", 6, 1e-3, 1.01, True, dtype=None), _w_mask)),
        tx("quintic", lambda: fo.masked(fo.orthogonalize_newton_schulz_timm(dtype=None), _w_mask)),
        # last: the one compiled (two steps keep the graph small)
        tx("original_two_steps", lambda: fo.masked(fo.orthogonalize_newton_schulz_timm("original", 2, dtype=None),
                                                   _w_mask)),
    )),
    Entry("scale_by_muon_shape", "transform", (
        tx("original", lambda: fo.scale_by_muon_shape("original")),
        tx("match_rms_adamw", fo.scale_by_muon_shape),
    )),
    Entry("scale_by_adamuon", "transform", (
        tx("rms_to_rms", lambda: fo.scale_by_adamuon(0.9, 1e-8, "rms_to_rms")),
        tx("match_rms_adamw", fo.scale_by_adamuon),
    )),
)
NON_TRANSFORMS = {**NON_TRANSFORMS, "ScaleByAdamuonState": _STATE}

# ---- apex's fused optimizers (fo.apex.fused_adam/lamb/sgd/novograd) and their transforms ----
# The fo.apex aliases run through every check as samples of the entries they are built from.
ENTRIES += (
    Entry("scale_by_apex_moments", "transform", (
        tx("l2_no_bias_correction_no_averaging", lambda: fo.scale_by_apex_moments(
            0.8, 0.99, 1e-4, bias_correction=False, weight_decay=0.01, adam_w_mode=False, grad_averaging=False)),
        opt("apex_fused_adamw", lambda lr: fo.apex.fused_adam(lr, weight_decay=0.01)),
        opt("apex_fused_sgd_nesterov_wd_after", lambda lr: fo.apex.fused_sgd(
            lr, momentum=0.9, weight_decay=0.01, nesterov=True, wd_after_momentum=True)),
        opt("apex_fused_lamb_l2_nvlamb", lambda lr: fo.apex.fused_lamb(
            lr, weight_decay=0.01, adam_w_mode=False, max_grad_norm=0.5, use_nvlamb=True)),
    )),
    Entry("scale_by_apex_novograd", "transform", (
        tx("inf_norm_inside_moment_init_zero", lambda: fo.scale_by_apex_novograd(
            0.9, 0.99, 1e-6, weight_decay=0.01, reg_inside_moment=True, norm_type=0, init_zero=True)),
        opt("apex_fused_novograd_decay", lambda lr: fo.apex.fused_novograd(lr, betas=(0.95, 0.98),
                                                                           weight_decay=0.01)),
    )),
)
NON_TRANSFORMS = {**NON_TRANSFORMS, "apex": _MODULE, "ScaleByApexMomentsState": _STATE,
                  "ScaleByApexNovogradState": _STATE}


# ---- timm's LaProp (fo.laprop = fo.timm.laprop), its transform and its decay after the step ----
ENTRIES += (
    Entry("scale_by_laprop", "transform", (
        # the learning rate is its own (it enters the momentum); the output is the whole step
        opt("betas_eps", lambda lr: fo.chain(fo.scale_by_laprop(lr, 0.5, 0.9, eps=1e-8), fo.scale(-1.0))),
    )),
    Entry("laprop", "alias", (
        opt("caution_corrected", lambda lr: fo.laprop(lr, weight_decay=0.1, caution=True, corrected_weight_decay=True,
                                                      max_lr_snapshot=0.1)),
        # the last sample is the compiled one: kept small (the compile budget; caution and the
        # decay after the step compile in the samples of cautious and of that transform)
        opt("default", lambda lr: fo.laprop(lr)),
    )),
    Entry("add_decoupled_weight_decay_after_step", "transform", (
        opt("corrected", lambda lr: fo.chain(fo.scale_by_learning_rate(lr),  # (the compiled sample: kept small)
                                             fo.add_decoupled_weight_decay_after_step(0.1, lr, max_learning_rate=0.1))),
    )),
)
NON_TRANSFORMS = {**NON_TRANSFORMS, "ScaleByLapropState": _STATE}

# ---- timm's Adan, Adopt, NAdamW, SGDW (fo.adan/adopt/nadamw/sgdw = fo.timm.*) and their pieces ----
# The compile check runs each entry's last sample: the transforms' last samples carry their
# own options (Adan's and ADOPT's built-in caution), the aliases' last ones the decays and
# maximize; the cautious wrapper around NAdamW's and SGDW's steps is compiled in earlier
# entries (``cautious``), so their caution samples come first.
_PROX_BF16 = ("the proximal decay returns p_new - p with p_new = (p + u) / (1 + lr * wd) computed in the param "
              "dtype, as timm's in-place bf16 step rounds it, so a bf16 update carries up to one bf16 ulp of the "
              "param")
ENTRIES += (
    Entry("scale_by_adan", "transform", (
        tx("default", fo.scale_by_adan),
        tx("caution", lambda: fo.scale_by_adan(0.9, 0.8, 0.95, 1e-6, caution=True)),
    )),
    Entry("add_proximal_weight_decay", "transform", (
        opt("after_sgd", lambda lr: fo.chain(fo.scale_by_learning_rate(lr), fo.add_proximal_weight_decay(0.1, lr))),
    ), bf16_update_from_params=_PROX_BF16),
    Entry("adan", "alias", (
        opt("prox_caution", lambda lr: fo.adan(lr, betas=(0.9, 0.8, 0.95), weight_decay=0.05, caution=True)),
        opt("no_prox", lambda lr: fo.adan(lr, weight_decay=0.05, no_prox=True)),
    ), bf16_update_from_params=_PROX_BF16),
    Entry("scale_by_adopt", "transform", (
        tx("default", fo.scale_by_adopt),
        tx("no_clip", lambda: fo.scale_by_adopt(0.8, 0.99, 1e-3, None)),
        tx("caution_decay", lambda: fo.scale_by_adopt(0.8, 0.99, 1e-3, 0.5, caution=True, weight_decay=0.1)),
    )),
    Entry("adopt", "alias", (
        opt("decoupled_corrected_caution", lambda lr: fo.adopt(lr, betas=(0.8, 0.99), weight_decay=0.05,
                                                               decoupled=True, corrected_weight_decay=True,
                                                               caution=True, max_lr_snapshot=0.1)),
        opt("coupled_maximize", lambda lr: fo.adopt(lr, weight_decay=0.05, maximize=True)),
    )),
    Entry("nadamw", "alias", (
        opt("caution_clipped", lambda lr: fo.nadamw(lr, betas=(0.8, 0.99), caution=True, clipping_threshold=0.5)),
        opt("corrected_maximize", lambda lr: fo.nadamw(lr, weight_decay=0.05, corrected_weight_decay=True,
                                                       maximize=True, max_lr_snapshot=0.1)),
    )),
    Entry("sgdw", "alias", (
        opt("plain_wd", lambda lr: fo.sgdw(lr, weight_decay=0.05)),
        opt("nesterov_caution", lambda lr: fo.sgdw(lr, momentum=0.9, nesterov=True, weight_decay=0.05,
                                                   caution=True)),
        opt("dampened_corrected_maximize", lambda lr: fo.sgdw(
            lr, momentum=0.9, dampening=0.2, weight_decay=0.05, corrected_weight_decay=True, maximize=True,
            max_lr_snapshot=0.1)),
    )),
)
NON_TRANSFORMS = {**NON_TRANSFORMS, "ScaleByAdanState": _STATE}


# ---- timm's MARS (fo.mars = fo.timm.mars) and its corrected gradient ----
ENTRIES += (
    Entry("mars_gradient_correction", "transform", (
        tx("clipped_adam", lambda: fo.chain(fo.mars_gradient_correction(0.1, 0.9), fo.scale_by_timm_adam())),
        # the compiled sample (the last): small; the clipped form compiles in fo.mars's
        tx("record_only", lambda: fo.chain(fo.mars_gradient_correction(0.0, 0.9, max_norm=None), fo.scale_by_adam())),
    )),
    Entry("mars", "alias", (
        opt("caution_fallback_options", lambda lr: fo.mars(lr, betas=(0.8, 0.95), weight_decay=0.1, gamma=0.1,
                                                           lr_1d_factor=0.5, betas_1d=(0.7, 0.9), caution=True)),
        # the compiled sample (the last): one branch (optimize_1d), the clipped correction and caution
        opt("lion_caution_1d", lambda lr: fo.mars(lr, mars_type="lion", optimize_1d=True, caution=True,
                                                  weight_decay=0.1)),
    )),
)
NON_TRANSFORMS = {**NON_TRANSFORMS, "MarsGradientCorrectionState": _STATE}
# ---- timm's Kron / PSGD (fo.kron = fo.timm.kron; its transform is functional_optim.transforms.scale_by_kron) ----
_KRON_HOST = ("reads its step counters and its generators' states on the host and branches on "
              "them (when to update and balance the preconditioner, timm's Python random.Random "
              "draws), like timm's Kron; documented as exempt from the torch.compile and vmap contracts")
_KRON_BF16 = ("returns p_new - p with p_new = p - lr * d (after p * (1 - r) when decoupled) computed in "
              "the param dtype, as timm's in-place bf16 step rounds it, so a bf16 update carries up to "
              "one bf16 ulp of the param")


def _kron_first_step_only(step: int) -> float:
    # the triangular factors are fitted at the first step only, while Q = I: their float32
    # solves (timm's choice) then round the random probe alone, which does not depend on lr
    # or the params, so finite differences stay exact; later fits would move by float32
    # rounding between the finite-difference points (tests/test_timm_kron.py checks those)
    return 1.0 if step == 0 else 1e-3


ENTRIES += (
    Entry("kron", "alias", (
        opt("triangular_first_fit", lambda lr: fo.kron(lr, weight_decay=0.01,
                                                        preconditioner_update_probability=_kron_first_step_only)),
        # all factors diagonal (max_size_triangular=1), flattened, fitted on the gradient, probes seeded
        # by the Python generator, stochastic corrected decoupled decay
        opt("timm_kronc_diag_flatten_stochastic", lambda lr: fo.timm.kron(
            lr, momentum=0.5, weight_decay=0.05, decoupled_decay=True, corrected_weight_decay=True,
            stochastic_weight_decay=True, max_lr_snapshot=0.1, max_size_triangular=1, flatten=True,
            flatten_start_dim=0, momentum_into_precond_update=False, deterministic=True,
            preconditioner_update_probability=0.5)),
    ), exceptions={"vmap_batch": _KRON_HOST, "vmap_shared": _KRON_HOST, "vmap_hypergrad": _KRON_HOST,
                   "compile": _KRON_HOST}, bf16_update_from_params=_KRON_BF16),
)


# ---- bitsandbytes: 8-bit blockwise state (fo.quantized_state), AdEMAMix, fo.bitsandbytes.* ----
# The conformance params are tiny, so the samples quantise in blocks of 4 from 2 elements up
# (bitsandbytes: 256 and 4096). fo.bitsandbytes' aliases run as samples of quantized_state (what
# their 8-bit forms are) and of scale_by_ademamix: the 32-bit ones all, of the 8-bit ones AdEMAMix
# (both maps, schedules, cpu_lut) and SGD (the compile check's), as each 8-bit sample costs 4-11 s
# of checks; Adam8bit/Lion8bit are the same wrapper over fo.adam/fo.timm.lion's math. Parity with
# bitsandbytes' trajectories (all ten classes) is tested in tests/test_bnb.py.
ENTRIES += (
    Entry("quantized_state", "wrapper", (
        opt("bnb_adam_32bit", lambda lr: fo.bitsandbytes.adam(lr, weight_decay=0.1)),
        opt("bnb_sgd_32bit", lambda lr: fo.bitsandbytes.sgd(lr, momentum=0.9, weight_decay=0.01)),
        opt("bnb_lion_32bit", lambda lr: fo.bitsandbytes.lion(lr, weight_decay=0.1)),
        opt("bnb_ademamix8bit_cpu_lut", lambda lr: fo.bitsandbytes.ademamix8bit(
            lr, t_alpha=2, t_beta3=3, min_8bit_size=2, rounding="cpu_lut")),
        opt("adam_blocks_of_4", lambda lr: fo.quantized_state(fo.adam(lr, amsgrad=True), block_size=4, min_size=2)),
        # last: the one the compile check runs (the smallest graph: tracing costs ~1 s per op here)
        opt("bnb_sgd8bit", lambda lr: fo.bitsandbytes.sgd8bit(lr, 0.9, min_8bit_size=2)),
    )),
    Entry("scale_by_ademamix", "transform", (
        tx("default", fo.scale_by_ademamix),
        opt("bnb_ademamix_32bit", lambda lr: fo.bitsandbytes.ademamix(lr, alpha=2.0)),
        tx("scheduled", lambda: fo.scale_by_ademamix(0.8, 0.99, 0.999, alpha=2.0, t_alpha=2, t_beta3=3)),
    )),
)
NON_TRANSFORMS = {**NON_TRANSFORMS, "bitsandbytes": _MODULE, "quantization": _MODULE,
                  "QuantizationMaps": _STATE, "QuantizedState": _STATE, "ScaleByAdemamixState": _STATE,
                  "quantize_state": _UTILITY, "dequantize_state": _UTILITY}


# ---- bfloat16 state and params: bf16_state, stochastic_rounding_updates, kahan_summation ----
_PARAM_DELTA = ("returns t - p, the change of the param to its stochastically rounded (or compensated) "
                "new value computed in the params' dtype")
ENTRIES += (
    Entry("bf16_state", "wrapper", (
        opt("adam_nearest", lambda lr: fo.bf16_state(fo.adam(lr), rounding="nearest")),
        opt("adamw_stochastic", lambda lr: fo.bf16_state(fo.adamw(lr, weight_decay=0.01), seed=5)),
    )),
    Entry("stochastic_rounding_updates", "transform", (
        opt("after_sgd", lambda lr: fo.chain(fo.sgd(lr, momentum=0.9), fo.stochastic_rounding_updates(seed=2))),
    ), bf16_update_from_params=_PARAM_DELTA),
    Entry("kahan_summation", "transform", (
        opt("after_adam", lambda lr: fo.chain(fo.adam(lr), fo.kahan_summation())),
        opt("float32_compensation", lambda lr: fo.chain(fo.sgd(lr), fo.kahan_summation(torch.float32))),
    ), bf16_update_from_params=_PARAM_DELTA),
)
NON_TRANSFORMS = {**NON_TRANSFORMS, "Bf16State": _STATE, "StochasticRoundingUpdatesState": _STATE,
                  "KahanSummationState": _STATE}


def public_names() -> set[str]:
    """``fo.__all__`` and every public attribute of the package."""
    return set(fo.__all__) | {n for n in dir(fo) if not n.startswith("_")}


# Checks that run one sample per entry (the last one listed, which has the most non-default
# options), to keep the suite fast: dynamo's tracing of one update costs 0.5-6 s here.
ONE_SAMPLE_PER_ENTRY = ("compile",)


def cases(check: str) -> list[tuple[Entry, Sample]]:
    """The (entry, sample) pairs a check runs: all of them but the listed exceptions
    (the last non-excepted sample of each entry for the ONE_SAMPLE_PER_ENTRY checks)."""
    out = []
    for e in ENTRIES:
        kept = [(e, s) for s in e.samples if e.exception(s, check) is None]
        out.extend(kept[-1:] if check in ONE_SAMPLE_PER_ENTRY else kept)
    return out


def case_id(case: tuple[Entry, Sample]) -> str:
    e, s = case
    return f"{e.name}-{s.name}"
