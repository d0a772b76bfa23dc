"""add_noise: the noise's distribution against optax's rule sigma_t**2 = eta / (1 + t)**gamma,
reproducibility from the seed and the state, fresh noise every step, dtypes, vmap over keys."""

from __future__ import annotations

import math

import pytest
import torch

import functional_optim as fo
from functional_optim.transforms.noise import AddNoiseState, add_noise

N = 1 << 20  # samples per statistical check


def _noise(tx, state, like):
    out, new_state = tx.update(like, state)
    return fo.tree.sub(out, like), new_state


def _check_normal(z: torch.Tensor, sigma: float) -> None:
    """z ~ N(0, sigma**2): mean, variance, kurtosis and P(|z| < sigma), each within 5
    standard errors of its estimate (a false failure has probability < 1e-5 per check)."""
    z = z.double().reshape(-1) / sigma
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((z ** 4).mean()) - 3) < 5 * math.sqrt(96 / n)
    p = math.erf(1 / math.sqrt(2))  # 0.6827
    assert abs(float((z.abs() < 1).double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_noise_variance_follows_eta_over_one_plus_t_to_the_gamma(dtype):
    eta, gamma = 0.3, 0.55
    tx = add_noise(eta, gamma, key=12)
    like = torch.full((N,), 2.0, dtype=dtype)  # the noise is added to the updates
    state = tx.init(like)
    for t in (0, 1, 9):
        state = AddNoiseState(count=torch.tensor(t, dtype=torch.int32), rng_key=state.rng_key)
        z, new_state = _noise(tx, state, like)
        assert z.dtype == dtype and int(new_state.count) == t + 1
        _check_normal(z, math.sqrt(eta / (1 + t) ** gamma))


def test_first_steps_from_init_anneal_in_order():
    eta, gamma = 1.0, 1.0
    tx = add_noise(eta, gamma, seed=5)
    like = torch.zeros(N // 4, dtype=torch.float64)
    state = tx.init(like)
    stds = []
    for _ in range(4):
        z, state = _noise(tx, state, like)
        stds.append(float(z.std()))
    expected = [math.sqrt(eta / t ** gamma) for t in (1, 2, 3, 4)]
    for got, want in zip(stds, expected):
        assert abs(got / want - 1) < 5 * math.sqrt(1 / (2 * like.numel())) * 2


def test_complex_noise_has_half_the_variance_in_each_component():
    eta, gamma = 0.5, 0.0
    tx = add_noise(eta, gamma, key=3)
    like = torch.zeros(N // 2, dtype=torch.complex128)
    z, _ = _noise(tx, tx.init(like), like)
    assert z.dtype == torch.complex128
    _check_normal(z.real, math.sqrt(eta / 2))
    _check_normal(z.imag, math.sqrt(eta / 2))
    assert abs(float(torch.corrcoef(torch.stack([z.real, z.imag]))[0, 1])) < 5 / math.sqrt(z.numel())


def _corr(a, b):
    return abs(float(torch.corrcoef(torch.stack([a.double().reshape(-1), b.double().reshape(-1)]))[0, 1]))


def test_reproducible_from_the_seed_and_from_the_state_fresh_every_step():
    like = {"a": torch.zeros(1 << 16), "b": torch.zeros(1 << 16), "s": torch.zeros(())}
    tx = add_noise(1.0, 0.55, key=42)
    s0 = tx.init(like)
    z1, s1 = _noise(tx, s0, like)
    z1_again, _ = _noise(tx, s0, like)  # re-running a step from the same state
    z2, _ = _noise(tx, s1, like)
    other, _ = _noise(add_noise(1.0, 0.55, key=43), add_noise(1.0, 0.55, key=43).init(like), like)
    fresh, _ = _noise(add_noise(1.0, 0.55, seed=42), add_noise(1.0, 0.55, seed=42).init(like), like)
    bound = 5 / math.sqrt(1 << 16)
    for key in like:
        assert torch.equal(z1[key], z1_again[key]) and torch.equal(z1[key], fresh[key])
    for key in ("a", "b"):
        assert _corr(z1[key], z2[key]) < bound  # a new step, new noise
        assert _corr(z1[key], other[key]) < bound  # another seed, other noise
        assert _corr(z1[key][1:], z1[key][:-1]) < bound  # neighbours are independent
    assert _corr(z1["a"], z1["b"]) < bound  # leaves of one shape get different noise
    assert not torch.equal(z1["s"], z2["s"])


def test_generator_and_tensor_keys():
    like = torch.zeros(1000)
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    tx_a, tx_b = add_noise(0.1, 0.55, gen_a), add_noise(0.1, 0.55, gen_b)
    sa, sb = tx_a.init(like), tx_b.init(like)
    assert sa.rng_key.dtype == torch.int64 and sa.rng_key.dim() == 0 and int(sa.rng_key) >= 0
    assert torch.equal(_noise(tx_a, sa, like)[0], _noise(tx_b, sb, like)[0])
    assert int(tx_a.init(like).rng_key) != int(sa.rng_key)  # each init draws a new seed
    tx_t = add_noise(0.1, 0.55, torch.tensor(123))
    tx_i = add_noise(0.1, 0.55, 123)
    assert torch.equal(_noise(tx_t, tx_t.init(like), like)[0], _noise(tx_i, tx_i.init(like), like)[0])
    assert int(add_noise(0.1, 0.55, -1).init(like).rng_key) == 2 ** 63 - 1  # ints modulo 2**63
    assert int(add_noise(0.1, 0.55).init(like).rng_key) == 0  # no key: seed 0


@pytest.mark.parametrize("donate", [False, True])
def test_purity_donation_dtypes_and_none_leaves(donate):
    like = {"w": torch.ones(3, 4, dtype=torch.bfloat16), "b": torch.ones(4), "s": torch.ones((), dtype=torch.float64),
            "none": None}
    tx = add_noise(0.01, 0.55, 0)
    params = {**like, "none": torch.ones(2)}
    state = tx.init(params)
    given = {key: None if v is None else v.clone() for key, v in like.items()}
    count = state.count.clone()
    out, new_state = tx.update(like, state, params, donate=donate)
    assert out["none"] is None
    for key in ("w", "b", "s"):
        assert out[key].dtype == like[key].dtype and out[key].shape == like[key].shape
        assert not torch.equal(out[key], given[key])
        assert (out[key].double() - 1).abs().max() < 1.0  # 0.1 * 6 sigma at most
        if donate:
            assert out[key].data_ptr() == like[key].data_ptr()
        else:
            assert torch.equal(like[key], given[key])
    assert torch.equal(state.count, count) and int(new_state.count) == 1


def test_vmap_over_a_batch_of_keys_gives_each_member_its_own_noise():
    tx = add_noise(1.0, 0.0, 0)
    like = torch.zeros(4096)
    keys = torch.tensor([11, 12, 13])
    counts = torch.zeros(3, dtype=torch.int32)

    def step(key, count):
        return tx.update(like, AddNoiseState(count=count, rng_key=key))[0]

    batched = torch.func.vmap(step)(keys, counts)
    for i in range(3):
        single = add_noise(1.0, 0.0, int(keys[i]))
        assert torch.equal(batched[i], single.update(like, single.init(like))[0])
    assert _corr(batched[0], batched[1]) < 5 / math.sqrt(4096)


def test_differentiable_in_the_updates_and_in_eta():
    like = torch.zeros(256, dtype=torch.float64)
    eta = torch.tensor(0.2, dtype=torch.float64)
    state = add_noise(0.2, 0.55, 9).init(like)

    def total(u, eta):
        return add_noise(eta, 0.55, 9).update(u, state)[0].sum()

    g_u, g_eta = torch.func.grad(total, argnums=(0, 1))(like, eta)
    assert torch.equal(g_u, torch.ones_like(like))
    # d/d eta sum(sqrt(eta) * z) = sum(z) / (2 sqrt(eta)) at t = 0
    z = add_noise(1.0, 0.55, 9).update(like, state)[0]
    torch.testing.assert_close(g_eta, z.sum() / (2 * eta.sqrt()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make, error, match", [
    (lambda: add_noise(0.1, 0.55, 1.5), TypeError, "key"),
    (lambda: add_noise(0.1, 0.55, torch.tensor([1, 2])), TypeError, "key"),
    (lambda: add_noise(0.1, 0.55, torch.tensor(1.0)), TypeError, "key"),
    (lambda: add_noise(0.1, 0.55, 1, seed=2), ValueError, "key and seed"),
    (lambda: add_noise(0.1, 0.55, seed="2"), TypeError, "seed"),
    (lambda: add_noise(float("nan"), 0.55), ValueError, "eta"),
    (lambda: add_noise(0.1, None), TypeError, "gamma"),
])
def test_bad_input_names_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_chain_with_sgd_moves_params_reproducibly():
    params = {"w": torch.ones(8, dtype=torch.float64)}
    tx = fo.chain(add_noise(0.01, 0.55, 1), fo.sgd(0.1))

    def run():
        state, p = tx.init(params), params
        for _ in range(3):
            updates, state = tx.update({"w": torch.zeros(8, dtype=torch.float64)}, state, p)
            p = fo.apply_updates(p, updates)
        return p["w"]

    first, second = run(), run()
    assert torch.equal(first, second) and not torch.equal(first, params["w"])
