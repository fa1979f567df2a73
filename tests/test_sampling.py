"""EDM sampler vs the official Heun golden run, Gaussian-data theory, iDDPM rounding, one-step generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden_nets import GOLDEN_DIR, load_case, rel_err

from di_jax.convert.edm_mapping import state_dict_to_flax
from di_jax.nets import build_network, iddpm_round_sigma, iddpm_u
from di_jax.sampling import edm_sampler, edm_sigma_steps, one_step_generate, sample_network


def test_heun_matches_official_sampler():
    s = np.load(GOLDEN_DIR / "sampler_heun_ddpmpp_uncond_vp.npz")
    d, cfg, sd = load_case(str(s["param_file"]).replace(".npz", ""))
    net, params = build_network(cfg), state_dict_to_flax(sd, cfg)
    assert net.sigma_range() == (float(s["net_sigma_min"]), float(s["net_sigma_max"]))
    with jax.enable_x64(True):  # float64 state like the official sampler
        den = lambda x, sig, lab: net.apply({"params": params}, x, sig, class_labels=lab)
        run = jax.jit(lambda z: edm_sampler(den, z, num_steps=5, sigma_min=0.002, sigma_max=80, rho=7,
                                            net_sigma_range=net.sigma_range(), return_calls=True))
        x, c = run(s["latents"])
        assert x.dtype == jnp.float64
        np.testing.assert_allclose(c["t_steps"], s["t_steps"], rtol=1e-15)
        call_x = np.stack([c["x_hat"][0]] + [a for i in range(1, 5) for a in (c["x_euler"][i - 1], c["x_hat"][i])])
        call_d = np.stack([c["d_hat"][0]] + [a for i in range(1, 5) for a in (c["d_next"][i - 1], c["d_hat"][i])])
        call_s = np.concatenate([[c["t_hat"][0]], np.stack([c["t_steps"][1:5], c["t_hat"][1:]], 1).ravel()])
    np.testing.assert_allclose(call_s, s["call_sigma"], rtol=1e-15)
    errs = [(rel_err(call_x[i], s["call_x"][i]), rel_err(call_d[i], s["call_denoised"][i])) for i in range(9)]
    e_img = rel_err(x, s["images"])
    print(f"\nsampler calls (x, denoised) rel err: {[('%.1e' % a, '%.1e' % b) for a, b in errs]}; images {e_img:.2e}")
    assert max(max(e) for e in errs) <= 1e-5 and e_img <= 1e-5


def _gaussian_denoiser(sd):
    return lambda x, sigma, labels: sd ** 2 / (sd ** 2 + sigma ** 2) * x


def _scalar_reference(steps, solver, sd):
    """Algorithm 2 run on the scalar linear ODE dx/dsigma = sigma x / (sd^2 + sigma^2) in float64 numpy."""
    t, x = edm_sigma_steps(steps), None
    x = t[0]
    D = lambda x, s: sd ** 2 / (sd ** 2 + s ** 2) * x
    for i in range(steps):
        d = (x - D(x, t[i])) / t[i]
        xn = x + (t[i + 1] - t[i]) * d
        if solver == "heun" and i < steps - 1:
            xn = x + (t[i + 1] - t[i]) * (d + (xn - D(xn, t[i + 1])) / t[i + 1]) / 2
        x = xn
    return x


@pytest.mark.parametrize("solver,churn,steps", [("heun", 0.0, 18), ("euler", 0.0, 18), ("heun", 0.0, 256),
                                                ("heun", 40.0, 128)])
def test_gaussian_data_theory(solver, churn, steps):
    """Data N(0, sd^2) with its exact denoiser: the ODE maps z to z * scalar (reference recursion), which
    tends to sd * 80 / sqrt(80^2 + sd^2); the churned SDE also ends with std ~ sd (Karras et al. sec. 4)."""
    sd = 0.5
    z = jax.random.normal(jax.random.PRNGKey(0), (2048, 1, 4, 4))
    x = jax.jit(lambda z, k: edm_sampler(_gaussian_denoiser(sd), z, k, num_steps=steps, solver=solver,
                                         S_churn=churn, S_min=0.05, S_max=50, S_noise=1.0))(z, jax.random.PRNGKey(1))
    if churn == 0:
        ref = _scalar_reference(steps, solver, sd)
        assert rel_err(x, z * ref) < 5e-3  # float32 state: rounding in x - D at small sigma accumulates
        with jax.enable_x64(True):  # float64 state, as the official sampler
            x64 = edm_sampler(_gaussian_denoiser(sd), np.asarray(z[:8], np.float64), num_steps=steps, solver=solver)
            assert x64.dtype == jnp.float64
            assert rel_err(x64, np.asarray(z[:8], np.float64) * ref) < 1e-7
        if steps == 256:
            assert ref == pytest.approx(sd * 80 / np.sqrt(80 ** 2 + sd ** 2), rel=1e-3)
    else:
        assert abs(float(jnp.std(x)) / sd - 1) < 0.03
        assert abs(float(jnp.mean(x))) < 0.02


def test_stochastic_consumes_key_and_deterministic_does_not():
    z = jax.random.normal(jax.random.PRNGKey(0), (4, 1, 4, 4))
    den = _gaussian_denoiser(0.5)
    a = edm_sampler(den, z, jax.random.PRNGKey(1), num_steps=8, S_churn=10.0)
    b = edm_sampler(den, z, jax.random.PRNGKey(2), num_steps=8, S_churn=10.0)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(edm_sampler(den, z, jax.random.PRNGKey(1), num_steps=8),
                                  edm_sampler(den, z, jax.random.PRNGKey(2), num_steps=8))
    with pytest.raises(ValueError, match="key"):
        edm_sampler(den, z, None, S_churn=1.0)
    with pytest.raises(ValueError, match="solver"):
        edm_sampler(den, z, solver="rk4")


def test_sigma_steps_and_iddpm_rounding():
    t = edm_sigma_steps(5, 0.002, 80, 7)
    np.testing.assert_allclose(t, [80, 17.5278, 2.51522, 0.169753, 0.002, 0], rtol=2e-5)
    u = iddpm_u()
    lo = float(u[999])
    t = edm_sigma_steps(18, lo, 80, 7, round_sigma=lambda s: np.asarray(iddpm_round_sigma(s, u), np.float64))
    assert all(np.min(np.abs(u - v)) == 0 for v in t[:-1]) and t[-1] == 0 and t[-2] == pytest.approx(lo)
    with pytest.raises(ValueError, match="num_steps"):
        edm_sigma_steps(1)


def test_one_step_generate_is_denoiser_at_sigma_init():
    d, cfg, sd = load_case("ddpmpp_cond_edm")
    net, params = build_network(cfg), state_dict_to_flax(sd, cfg)
    apply = lambda p, x, s, lab: net.apply({"params": p}, x, s, class_labels=lab)
    z, lab = d["x"], d["class_labels"]
    got = one_step_generate(apply, params, z, 2.5, lab)
    want = net.apply({"params": params}, 2.5 * z, np.full(4, 2.5, np.float32), class_labels=lab)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="sigma_init"):
        one_step_generate(apply, params, z, 0.0, lab)


def test_sample_network_uses_net_range_and_rounding():
    d, cfg, sd = load_case("adm_multihead_iddpm")
    net, params = build_network(cfg), state_dict_to_flax(sd, cfg)
    x, c = sample_network(net, params, d["x"][:2], class_labels=d["class_labels"][:2], num_steps=3, return_calls=True)
    u = iddpm_u()
    t = np.asarray(c["t_steps"])
    assert t[-1] == 0 and all(np.min(np.abs(u - v)) == 0 for v in t[:-1])
    assert t[-2] == pytest.approx(float(u[999]))  # clamped to the net's sigma_min, not 0.002
    assert x.shape == (2, 3, 8, 8) and bool(np.isfinite(x).all())
