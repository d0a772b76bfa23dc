"""Annealed Gaussian gradient noise, from a counter-based generator kept in state."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .. import kernels as k
from .. import steps
from ..base import GradientTransformation, Needs, declare
from ..hyperparams import check_number, check_range
from ..tree import select


class AddNoiseState(NamedTuple):
    """State of :func:`add_noise`."""

    count: torch.Tensor  # 0-d int32: updates made so far (the annealing step)
    rng_key: torch.Tensor  # 0-d int64 in [0, 2**63): the seed every step's noise derives from


# ---------------------------------------------------------------------------------
# A counter-based generator in plain integer tensor ops.
#
# Every 32-bit word is a hash of (seed, step, leaf, element index), so noise needs no
# generator object and no host sync: it is a pure function of tensors, the same eagerly,
# under torch.compile(fullgraph=True), vmap and grad, and on every device. Words live in
# int64 tensors holding values in [0, 2**32); every product stays within (-2**63, 2**63)
# (no overflow), so the arithmetic is exact wherever int64 is.

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (xorshift-multiply rounds with the "lowbias32"
    constants), computed in place: ``x`` must be a fresh int64 tensor of 32-bit values.

    A multiplier c >= 2**31 is used as c - 2**32 (the same modulo 2**32), so every product
    stays within (-2**63, 2**63): no int64 overflow, and ``& M32`` of the two's-complement
    result is the residue modulo 2**32.
    """
    x ^= x >> 16
    x *= 0x7FEB352D
    x &= _M32
    x ^= x >> 15
    x *= 0x846CA68B - 2 ** 32
    x &= _M32
    x ^= x >> 16
    return x


_SEEDS = 4  # per leaf: two seeds for each of the two hash words per element


def _stream_seeds(key: torch.Tensor, count: torch.Tensor, positions: list[int]) -> list[torch.Tensor]:
    """One row of 32-bit seeds per leaf position (its index in the flattened tree, None
    leaves included, so a leaf's noise does not depend on which others are None)."""
    key = key.to(torch.int64)
    base = _mix32((key & _M32) ^ _mix32(((key >> 32) & _M32) ^ _mix32(count.to(torch.int64) ^ 0x3C6EF372)))
    lanes = torch.tensor([[(p * _SEEDS + j) & _M32 for j in range(_SEEDS)] for p in positions],
                         dtype=torch.int64, device=key.device)
    return list(_mix32(_mix32(lanes ^ 0x9E3779B9) ^ base.unsqueeze(-1)).unbind(-2))


def _words(index: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, high: torch.Tensor | None) -> torch.Tensor:
    x = _mix32(index ^ s1)
    if high is not None:  # elements beyond 2**32 (huge tensors)
        x ^= (high * 0x9E3779B1) & _M32
    x ^= s2
    return _mix32(x)


def _normal(shape: torch.Size, dtype: torch.dtype, device: torch.device, seeds: torch.Tensor) -> torch.Tensor:
    """Standard normal samples of ``shape`` (Box-Muller over two hashed 32-bit words per
    element) in ``dtype``: float64 from 32-bit uniforms, else float32 from 24-bit ones."""
    n = math.prod(shape)
    index = torch.arange(n, dtype=torch.int64, device=device)
    high = None
    if n > _M32:
        index, high = index & _M32, index >> 32
    w = [_words(index, seeds[2 * j], seeds[2 * j + 1], high) for j in range(2)]
    if dtype == torch.float64:
        u1 = (w[0] + 1).to(dtype) * 2.0 ** -32  # in (0, 1]
        u2 = w[1].to(dtype) * 2.0 ** -32  # in [0, 1)
    else:
        dtype = torch.float32
        u1 = ((w[0] >> 8) + 1).to(dtype) * 2.0 ** -24
        u2 = (w[1] >> 8).to(dtype) * 2.0 ** -24
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2 * math.pi) * u2)
    return z.reshape(shape)


def _canonical_key(key: Any, seed: Any) -> Any:
    if seed is not None:
        if key is not None:
            raise ValueError("give only one of key and seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        key = seed
    if key is None:
        return 0
    if isinstance(key, torch.Generator):
        return key
    if isinstance(key, torch.Tensor):
        if key.dim() != 0 or key.is_floating_point() or key.is_complex() or key.dtype == torch.bool:
            raise TypeError(f"key must be an int, a 0-d integer tensor or a torch.Generator, got a "
                            f"{key.dtype} tensor of shape {tuple(key.shape)}")
        return key
    if isinstance(key, bool) or not isinstance(key, int):
        raise TypeError(f"key must be an int, a 0-d integer tensor or a torch.Generator, got "
                        f"{type(key).__name__}")
    return key


def add_noise(eta: float | torch.Tensor, gamma: float | torch.Tensor, key: Any = None, *,
              seed: int | None = None) -> GradientTransformation:
    """Add annealed Gaussian noise to the updates (Neelakantan et al., 2015).

    At step ``t`` (0 for the first update) every update element gets independent noise
    ``N(0, sigma_t**2)`` with ``sigma_t**2 = eta / (1 + t)**gamma`` (optax's rule; a complex
    element gets complex noise of that variance, half in each component).

    Randomness: the noise is a pure function of ``(rng_key, count)`` in the state, the
    leaf's position in the tree and the element's index, computed by a counter-based hash
    generator in integer tensor ops. So a step re-run on the same state gives the same
    noise, successive steps give independent noise, a seed reproduces a whole run (on any
    device the same integer hashes, up to float rounding of log/cos), and the update works under ``torch.compile(fullgraph=True)``, ``vmap`` (a batch
    of states with different keys gives different noise) and ``grad``. The samples differ
    from JAX's (another generator), not their distribution: Box-Muller over two 32-bit
    hash words per element, in float32 (24-bit uniforms, so |noise| <= 5.8 sigma) or, for
    float64 updates, float64 (32-bit uniforms, |noise| <= 6.7 sigma).

    Args:
      eta: base variance of the noise, >= 0 (a number or 0-d tensor).
      gamma: decay exponent of the variance (optax's papers use 0.55).
      key: the seed: an int (taken modulo ``2**63``), a 0-d integer tensor, or a
        ``torch.Generator`` from which ``init`` draws the seed (each ``init`` call draws a
        new one). Default None: seed 0.
      seed: optax's older name for an int ``key``; give at most one of ``key`` and ``seed``.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.transforms.noise import add_noise
      >>> tx = add_noise(eta=0.01, gamma=0.55, key=0)
      >>> params = {"w": torch.zeros(10_000)}
      >>> state = tx.init(params)
      >>> u, new_state = tx.update({"w": torch.zeros(10_000)}, state)
      >>> round(u["w"].std().item(), 2), new_state.count
      (0.1, tensor(1, dtype=torch.int32))
      >>> torch.equal(tx.update({"w": torch.zeros(10_000)}, state)[0]["w"], u["w"])  # same state, same noise
      True
    """
    check_range("eta", eta, 0.0)
    check_number("gamma", gamma)
    key = _canonical_key(key, seed)

    def init_fn(params):
        device = steps.first_device(params)
        if isinstance(key, torch.Generator):
            rng_key = torch.randint(0, 2 ** 63 - 1, (), generator=key, device=key.device, dtype=torch.int64)
        elif isinstance(key, torch.Tensor):
            rng_key = key.to(torch.int64) & (2 ** 63 - 1)
        else:
            rng_key = torch.tensor(key % 2 ** 63, dtype=torch.int64)
        return AddNoiseState(count=steps.zero_count(device), rng_key=rng_key.to(device))

    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates)
        us = sel.updates
        count = state.count + 1
        if not us:
            return updates, AddNoiseState(count=count, rng_key=state.rng_key)
        # sigma_t = sqrt(eta / (t + 1)**gamma), once per step, in double precision
        t1 = count.to(k.scalar_dtype(us[0]))
        sigma = torch.sqrt(eta / t1 ** gamma)
        seeds = _stream_seeds(state.rng_key, state.count, sel.index)
        noise, scales = [], []
        for u, s in zip(us, seeds):
            real = torch.view_as_real(u) if u.is_complex() else u
            noise.append(_normal(real.shape, real.dtype, u.device, s.to(u.device)))
            scales.append((sigma * math.sqrt(0.5) if u.is_complex() else sigma).to(noise[-1].dtype))
        noise = k.mul(noise, scales)  # not in place: sigma may be batched or differentiable
        noise = [n.to(real_dtype) for n, real_dtype in
                 zip(noise, [u.real.dtype if u.is_complex() else u.dtype for u in us])]
        noise = [torch.view_as_complex(n) if u.is_complex() else n for n, u in zip(noise, us)]
        out = k.add(us, noise, donate=donate)
        return sel.rebuild(out), AddNoiseState(count=count, rng_key=state.rng_key)

    return declare(GradientTransformation(init_fn, update_fn), Needs.LEAVES)  # noise by leaf position
