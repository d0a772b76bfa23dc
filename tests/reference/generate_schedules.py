"""Generate tests/reference/schedules.json: optax's and MONAI's schedules over 1000 steps.

Not run by the tests (they only read the JSON). Regenerate with::

    pip install optax jax monai   # monai 1.6.1 installs beside torch 2.13 without replacing it
    python tests/reference/generate_schedules.py

Each case names the function (``fo.<fn>`` has the same name and arguments as
``optax.<fn>``) and its keyword arguments; ``values[t]`` is the reference value at
count ``t`` in float64 (jax with x64 enabled, counts as int64 arrays; with the int32
counts ``optax.scale_by_schedule`` passes, jax computes some schedules in float32). MONAI cases also name the scheduler class and
the optimizer's base lr, with ``values[t]`` the lr after ``t`` calls of ``scheduler.step()``
on a torch.optim.SGD (float64 param), i.e. at ``last_epoch == t``.

JSON encoding of arguments: ``{"__dict__": [[key, value], ...]}`` is a dict with
non-string keys (``boundaries_and_scales``); ``{"fn": name, "kwargs": {...}}`` inside
arguments is a nested schedule (``join_schedules``).
"""

from __future__ import annotations

import json
import os
import sys

STEPS = 1000
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "schedules.json")


def d(mapping):
    """A dict with int keys, JSON-encoded."""
    return {"__dict__": [[k, v] for k, v in mapping.items()]}


def s(fn, **kwargs):
    """A nested schedule spec."""
    return {"fn": fn, "kwargs": kwargs}


OPTAX_CASES = {
    "constant": s("constant_schedule", value=0.3),
    "linear": s("linear_schedule", init_value=1.0, end_value=0.01, transition_steps=600, transition_begin=100),
    "linear_disabled": s("linear_schedule", init_value=0.7, end_value=0.1, transition_steps=0),
    "polynomial": s("polynomial_schedule", init_value=1.0, end_value=0.01, power=2.5, transition_steps=700,
                    transition_begin=50),
    "piecewise_constant": s("piecewise_constant_schedule", init_value=0.1,
                            boundaries_and_scales=d({200: 0.5, 450: 0.1, 800: 2.0})),
    "piecewise_interpolate_linear": s("piecewise_interpolate_schedule", interpolate_type="linear", init_value=1.0,
                                      boundaries_and_scales=d({100: 0.5, 300: 0.1, 301: 3.0, 700: 0.01})),
    "piecewise_interpolate_cosine": s("piecewise_interpolate_schedule", interpolate_type="cosine", init_value=2.0,
                                      boundaries_and_scales=d({250: 0.1, 600: 0.5})),
    "exponential_decay": s("exponential_decay", init_value=1.0, transition_steps=100, decay_rate=0.7,
                           transition_begin=50),
    "exponential_decay_staircase": s("exponential_decay", init_value=0.5, transition_steps=75, decay_rate=0.5,
                                     staircase=True, end_value=0.01),
    "exponential_growth_capped": s("exponential_decay", init_value=0.1, transition_steps=10, decay_rate=1.05,
                                   transition_begin=200, end_value=3.0),
    "cosine_decay": s("cosine_decay_schedule", init_value=0.8, decay_steps=700, alpha=0.05),
    "cosine_decay_exponent": s("cosine_decay_schedule", init_value=1.0, decay_steps=900, exponent=2.0),
    "warmup_cosine_decay": s("warmup_cosine_decay_schedule", init_value=0.0, peak_value=1.0, warmup_steps=100,
                             decay_steps=800, end_value=0.01),
    "warmup_cosine_decay_exponent": s("warmup_cosine_decay_schedule", init_value=1e-3, peak_value=0.5,
                                      warmup_steps=50, decay_steps=600, end_value=1e-4, exponent=1.5),
    "warmup_constant": s("warmup_constant_schedule", init_value=0.0, peak_value=1.0, warmup_steps=150),
    "warmup_exponential_decay": s("warmup_exponential_decay_schedule", init_value=0.0, peak_value=0.5,
                                  warmup_steps=100, transition_steps=50, decay_rate=0.8, transition_begin=100,
                                  end_value=0.01),
    "linear_onecycle": s("linear_onecycle_schedule", transition_steps=800, peak_value=0.1),
    "cosine_onecycle": s("cosine_onecycle_schedule", transition_steps=900, peak_value=0.5, pct_start=0.25,
                         div_factor=10.0, final_div_factor=100.0),
    "sgdr": s("sgdr_schedule", cosine_kwargs=[
        dict(init_value=0.0, peak_value=1.0, warmup_steps=20, decay_steps=300, end_value=0.01),
        dict(init_value=0.0, peak_value=0.5, warmup_steps=10, decay_steps=500),
        dict(init_value=0.1, peak_value=0.25, warmup_steps=0, decay_steps=150, exponent=2.0)]),
    "join": s("join_schedules", schedules=[
        s("linear_schedule", init_value=0.0, end_value=1.0, transition_steps=100),
        s("constant_schedule", value=0.5),
        s("cosine_decay_schedule", init_value=0.5, decay_steps=300)], boundaries=[100, 400]),
}

# fo's functional schedule, MONAI's scheduler class and the optimizer's base lr
MONAI_CASES = {
    "monai_warmup_cosine": (
        s("warmup_cosine_schedule", peak_value=0.1, warmup_steps=100, t_total=800, end_lr=0.005,
          warmup_multiplier=0.1),
        dict(cls="WarmupCosineSchedule", base_lr=0.1,
             kwargs=dict(warmup_steps=100, t_total=800, end_lr=0.005, warmup_multiplier=0.1))),
    "monai_warmup_cosine_cycles": (
        s("warmup_cosine_schedule", peak_value=1.0, warmup_steps=0, t_total=500, cycles=2.0),
        dict(cls="WarmupCosineSchedule", base_lr=1.0, kwargs=dict(warmup_steps=0, t_total=500, cycles=2.0))),
    "monai_linear_lr": (
        s("linear_range_schedule", init_value=1e-4, end_value=1.0, num_iter=600),
        dict(cls="LinearLR", base_lr=1e-4, kwargs=dict(end_lr=1.0, num_iter=600))),
    "monai_exponential_lr": (
        s("exponential_range_schedule", init_value=1e-5, end_value=10.0, num_iter=400),
        dict(cls="ExponentialLR", base_lr=1e-5, kwargs=dict(end_lr=10.0, num_iter=400))),
}


def decode(value, namespace):
    """JSON argument encoding -> Python values (nested schedules built from ``namespace``)."""
    if isinstance(value, dict) and set(value) == {"__dict__"}:
        return {k: decode(v, namespace) for k, v in value["__dict__"]}
    if isinstance(value, dict) and set(value) == {"fn", "kwargs"}:
        return build(value, namespace)
    if isinstance(value, dict):
        return {k: decode(v, namespace) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v, namespace) for v in value]
    return value


def build(spec, namespace):
    """The schedule ``namespace.<fn>(**kwargs)`` for a case spec."""
    return getattr(namespace, spec["fn"])(**decode(spec["kwargs"], namespace))


def optax_values(spec):
    import jax.numpy as jnp
    import optax

    fn = build(spec, optax)
    values = []
    for t in range(STEPS):
        v = float(jnp.asarray(fn(jnp.asarray(t, dtype=jnp.int64)), dtype=jnp.float64))
        w = float(jnp.asarray(fn(t), dtype=jnp.float64))  # a Python count agrees
        assert abs(v - w) <= 1e-13 * max(1.0, abs(v)), (spec, t, v, w)
        values.append(v)
    return values


def monai_values(monai_spec):
    import torch
    from monai.optimizers import lr_scheduler

    param = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([param], lr=monai_spec["base_lr"])
    sched = getattr(lr_scheduler, monai_spec["cls"])(opt, **monai_spec["kwargs"])
    values = []
    for _ in range(STEPS):
        values.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
    return values


def main() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import monai
    import optax
    import torch

    cases = {}
    for name, spec in OPTAX_CASES.items():
        cases[name] = {"library": "optax", **spec, "values": optax_values(spec)}
    for name, (spec, monai_spec) in MONAI_CASES.items():
        cases[name] = {"library": "monai", **spec, "monai": monai_spec, "values": monai_values(monai_spec)}
    meta = {"steps": STEPS, "optax": optax.__version__, "jax": jax.__version__, "monai": monai.__version__,
            "torch": torch.__version__, "python": sys.version.split()[0],
            "generator": "tests/reference/generate_schedules.py"}
    with open(OUT, "w") as f:
        json.dump({"meta": meta, "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(cases)} cases to {OUT} ({os.path.getsize(OUT) // 1024} KiB)")


if __name__ == "__main__":
    main()
