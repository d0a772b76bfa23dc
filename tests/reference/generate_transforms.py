"""Generate tests/reference/transforms.json: optax's values for the numerics, centering,
trust-ratio and per-leaf clipping transforms.

Not run by the tests (they only read the JSON). Regenerate with (optax 0.2.8, jax 0.10)::

    pip install optax jax
    python tests/reference/generate_transforms.py

jax runs with x64 enabled; every input is float64 or complex128 and is stored in the
JSON beside optax's output. Each case names the transform (``<module>.<fn>`` in
``functional_optim.transforms``, same name and arguments as ``optax.<fn>``), its keyword
arguments, the ``params`` and a list of ``steps``; each step holds the ``updates`` given
and optax's ``expected`` updates (and ``found_nan`` for ``zero_nans``).

adaptive_grad_clip's default units follow the layout of the arrays: torch stores
``Linear`` weights as ``(out, in)`` and conv weights as ``(out, in, *kernel)``, JAX as
``(in, out)`` and ``(*kernel, in, out)``. So for the ``axis=None`` cases each leaf is
given to optax transposed to JAX's layout (``(O, I)`` -> ``(I, O)``,
``(O, I, K)`` -> ``(K, I, O)`` with ``axis=(0, 1)`` since optax's 3-D default is for
multi-head kernels, ``(O, I, H, W)`` -> ``(H, W, I, O)``,
``(O, I, D, H, W)`` -> ``(D, H, W, I, O)``) and optax's result is transposed back; the
``axis=...`` cases give the arrays and the axis to optax unchanged.

Encoding: a tensor is ``{"shape": [...], "dtype": "float64" | "complex128", "re": [...],
"im": [...]}`` (flat, row-major; ``im`` only for complex; NaN/Infinity as JSON's
extensions that Python reads); a bool is a JSON bool.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "transforms.json")
RNG = np.random.RandomState(20240611)
SHAPES = {"s": (), "v": (5,), "m": (4, 3), "c": (2, 3, 2, 2)}


def enc(x):
    x = np.asarray(x)
    if x.dtype == np.bool_ and x.shape == ():
        return bool(x)
    out = {"shape": list(x.shape), "dtype": str(x.dtype)}
    flat = x.reshape(-1)
    out["re"] = [float(v) for v in np.real(flat)]
    if np.iscomplexobj(x):
        out["im"] = [float(v) for v in np.imag(flat)]
    return out


def enc_tree(tree):
    return {key: enc(value) for key, value in tree.items()}


def randn(shape, scale=1.0, complex_=False):
    x = RNG.standard_normal(shape) * scale
    if complex_:
        x = x + 1j * RNG.standard_normal(shape) * scale
    return np.asarray(x)


def run(tx, params, steps):
    """optax's updates for each step, starting from init(params)."""
    jparams = {key: jnp.asarray(v) for key, v in params.items()}
    state = tx.init(jparams)
    out = []
    for updates in steps:
        new, state = tx.update({key: jnp.asarray(v) for key, v in updates.items()}, state, jparams)
        step = {"updates": enc_tree(updates), "expected": enc_tree({key: np.asarray(v) for key, v in new.items()})}
        if isinstance(state, optax.ZeroNansState):
            step["found_nan"] = {key: bool(v) for key, v in state.found_nan.items()}
        out.append(step)
    return out


def case(module, fn, kwargs, params, steps, note=""):
    tx = getattr(optax, fn)(**kwargs)
    return {"module": module, "fn": fn, "kwargs": kwargs, "note": note, "params": enc_tree(params),
            "steps": run(tx, params, steps)}


def base_params(complex_=False):
    params = {key: randn(shape) for key, shape in SHAPES.items()}
    if complex_:
        params["z"] = randn((4, 3), complex_=True)
    return params


def updates_like(params, scale=1.0):
    return {key: randn(np.shape(v), scale, np.iscomplexobj(v)) for key, v in params.items()}


# ---------------------------------------------------------------------------------


def zero_nans_cases():
    params = base_params(complex_=True)
    step1 = updates_like(params)
    step1["v"][[1, 3]] = np.nan
    step1["m"][2, 1] = np.inf
    step1["m"][0, 0] = -np.inf
    step1["c"][1, 2, 0, 1] = np.nan
    step1["s"] = np.asarray(np.nan)
    step1["z"][1, 2] = complex(1.0, np.nan)
    step1["z"][3, 0] = complex(np.nan, -2.0)
    step2 = updates_like(params)  # clean: every flag back to False
    step2["m"][1, 1] = np.nan
    return [case("numerics", "zero_nans", {}, params, [step1, step2])]


def centralize_cases():
    params = base_params(complex_=True)
    params["row"] = randn((1, 6))
    params["col"] = randn((6, 1))
    return [case("centering", "centralize", {}, params, [updates_like(params, 2.0), updates_like(params, 0.3)])]


def nonnegative_cases():
    params = {key: np.abs(randn(shape)) for key, shape in SHAPES.items()}
    params["m"][1, :] = 0.0
    params["v"][4] = -0.25  # an already negative param is moved to 0
    updates = {key: randn(np.shape(v), 1.5) for key, v in params.items()}
    updates["c"][0, 0, 0, 0] = np.nan
    updates["m"][1, 0] = 0.0
    return [case("numerics", "keep_params_nonnegative", {}, params, [updates])]


def trust_ratio_cases():
    params = base_params(complex_=True)
    params["zp"] = np.zeros((3, 2))  # zero param norm: ratio 1
    params["zu"] = randn((4,))
    params["tiny"] = randn((2, 2), 1e-3)  # below min_norm in the floored cases
    ups = updates_like(params, 0.7)
    ups["zu"] = np.zeros(4)  # zero update norm: ratio 1
    ups["tiny"] = randn((2, 2), 1e-4)
    return [
        case("norm_scaling", "scale_by_trust_ratio", {}, params, [ups]),
        case("norm_scaling", "scale_by_trust_ratio", {"min_norm": 0.05, "trust_coefficient": 0.02, "eps": 1e-3},
             params, [ups]),
        case("norm_scaling", "scale_by_trust_ratio", {"trust_coefficient": 0.5, "eps": 1e-2}, params, [ups]),
    ]


def block_rms_cases():
    params = base_params(complex_=True)
    ups = updates_like(params, 1.0)
    ups["v"] = ups["v"] * 0.1  # below the threshold: unchanged
    ups["c"] = ups["c"] * 5.0
    return [case("clipping", "clip_by_block_rms", {"threshold": 0.8}, params, [ups, updates_like(params, 0.2)])]


# adaptive_grad_clip in torch's layout, computed by optax in JAX's layout
TO_JAX = {2: ((1, 0), None), 3: ((2, 1, 0), (0, 1)), 4: ((2, 3, 1, 0), None), 5: ((2, 3, 4, 1, 0), None)}


def agc_torch_layout(clipping, eps, params, updates):
    out = {}
    for key in params:
        p, u = np.asarray(params[key]), np.asarray(updates[key])
        squeezed = sum(1 for s in p.shape if s != 1)
        if squeezed <= 1:
            perm, axis = tuple(range(p.ndim)), None
        else:
            perm, axis = TO_JAX[p.ndim]
        tx = optax.adaptive_grad_clip(clipping, eps, axis=axis)
        pj, uj = {key: jnp.asarray(p.transpose(perm))}, {key: jnp.asarray(u.transpose(perm))}
        new, _ = tx.update(uj, tx.init(pj), pj)
        out[key] = np.asarray(new[key]).transpose(np.argsort(perm))
    return out


def agc_cases():
    params = {"s": randn(()), "v": randn((5,)), "m": randn((4, 3)), "conv2d": randn((2, 3, 2, 2)),
              "conv1d": randn((3, 2, 4)), "conv3d": randn((2, 2, 2, 3, 2)), "row": randn((1, 5)),
              "col": randn((5, 1)), "pointwise": randn((3, 1, 1, 1)), "zero": np.zeros((3, 4)),
              "z": randn((4, 3), complex_=True)}
    steps = []
    for scale in (1.0, 0.02):
        ups = updates_like(params, scale)
        ups["m"][1] *= 1e-3  # one unit well below its limit
        steps.append(ups)
    clipping, eps = 0.05, 1e-3
    cases = []
    for clip_, eps_ in ((clipping, eps), (0.3, 0.05)):
        entry = {"module": "clipping", "fn": "adaptive_grad_clip", "kwargs": {"clipping": clip_, "eps": eps_},
                 "note": "torch layout; optax fed JAX-layout transposes", "params": enc_tree(params), "steps": []}
        for ups in steps:
            entry["steps"].append({"updates": enc_tree(ups),
                                   "expected": enc_tree(agc_torch_layout(clip_, eps_, params, ups))})
        cases.append(entry)
    # explicit axis: the same arrays and axis in both libraries
    for axis, keys in ((0, ("v", "m", "conv2d", "conv3d")), ((1, 2), ("conv2d", "conv3d")), (-1, ("m", "conv1d"))):
        explicit = {key: params[key] for key in keys}
        cases.append(case("clipping", "adaptive_grad_clip", {"clipping": 0.1, "eps": 1e-3, "axis": axis},
                          explicit, [updates_like(explicit, 1.0)]))
    return cases


def main():
    cases = (zero_nans_cases() + centralize_cases() + nonnegative_cases() + trust_ratio_cases()
             + block_rms_cases() + agc_cases())
    data = {"optax": optax.__version__, "jax": jax.__version__, "cases": cases}
    with open(OUT, "w") as f:
        json.dump(data, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
