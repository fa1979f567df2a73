"""Gradient identities of the surrogate losses against closed form (issue "Foundation", spec §6).

Teacher N(m, r^2 I), generator x0 = mu + s z (AffineGaussianGenerator) whose exact diffused score is
the fake denoiser. Monte-Carlo checks compare the batch-mean gradient with its expectation and judge
the difference against the MC standard error SE = std(per-example gradient) / sqrt(N): a failure
means > Z_MAX standard errors, which has probability < 1e-6 per component under a correct identity.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

from di_jax import diffusion, distances, losses, methods
from di_jax.teachers import AffineGaussianGenerator, GaussianMixture, IsotropicGaussian, gaussian_kl

Z_MAX = 5.0
N = 200_000
sg = jax.lax.stop_gradient

TEACHER = dict(mean=[0.5, -1.0, 2.0], std=1.5)
GENERATOR = dict(mu=[0.0, 0.3, 1.0], s=0.8)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _teacher():
    return IsotropicGaussian(jnp.array(TEACHER["mean"]), jnp.array(TEACHER["std"]))


def _generator(mu=None, s=None):
    return AffineGaussianGenerator(jnp.array(GENERATOR["mu"] if mu is None else mu),
                                   jnp.array(GENERATOR["s"] if s is None else s))


def _draws(seed, n=N, dim=3, sigma_kind="edm"):
    kz, ke, ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    z = jax.random.normal(kz, (n, dim))
    eps = jax.random.normal(ke, (n, dim))
    sigma = diffusion.sample_sigma(ks, (n,), sigma_kind)
    return z, eps, sigma


def _flat(tree):
    return jnp.concatenate([jnp.ravel(v) for v in jax.tree_util.tree_leaves(tree)])


def _mc_check(per_example_fn, gen, data, expected=None, per_example_ref=None):
    """Returns (mc gradient, expected gradient, standard error) with the SE of the (paired) difference."""
    per = jax.vmap(lambda *d: _flat(jax.grad(per_example_fn)(gen, *d)))(*data)      # [N, P]
    if per_example_ref is not None:
        ref = jax.vmap(lambda *d: _flat(per_example_ref(gen, *d)))(*data)
        expected, diff = ref.mean(0), per - ref
    else:
        diff = per
    se = diff.std(0) / np.sqrt(per.shape[0])
    return per.mean(0), jnp.asarray(expected), se


def _assert_within_se(got, want, se, what):
    z = np.abs(np.asarray(got - want)) / (np.asarray(se) + 1e-300)
    rel = np.abs(np.asarray(got - want)) / np.maximum(np.abs(np.asarray(want)), 1e-12)
    print(f"\n{what}: rel.err {np.array2string(rel, precision=2)}  |err|/SE {np.array2string(z, precision=2)}")
    assert np.all(z < Z_MAX), f"{what}: gradient differs by {z.max():.1f} standard errors"


def _one(fn):
    """Per-example loss (batch of one) of `fn(gen, x0, sigma, eps)`, differentiable in gen."""
    def per_example(gen, z, eps, sigma):
        return fn(gen, z[None], eps[None], sigma[None])[0]
    return per_example


# ------------------------------------------------------------------------------------------
# (a) DI: grad of the mean surrogate = grad of mean_i sigma_i^2 KL(q_sigma_i || p_sigma_i).

def _di(gen, z, eps, sigma):
    fake = AffineGaussianGenerator(*sg(tuple(gen)))
    return losses.di_generator_loss(gen(z), sigma, eps, fake.denoiser, _teacher().denoiser)[0]


def test_di_gradient_equals_weighted_kl_gradient():
    gen, (z, eps, sigma) = _generator(), _draws(0)
    exact = _flat(jax.grad(lambda g: jnp.mean(jax.vmap(
        lambda s: s**2 * gaussian_kl(g.marginal(), _teacher(), s))(sigma)))(gen))
    got, want, se = _mc_check(_one(_di), gen, (z, eps, sigma), expected=exact)
    _assert_within_se(got, want, se, "(a) DI vs sigma^2 KL")


# ------------------------------------------------------------------------------------------
# (b) SIM: grad of the mean surrogate = E_{x ~ p_sg(theta)}[w d'(y) . dD_theta/dtheta] (Theorem 3.1).

DISTANCES = [distances.pseudo_huber(0.5), distances.l2(), distances.alpha_power(4),
             distances.exp_power(2, 0.05), distances.l1(), distances.huber(0.3)]


def _sim(distance, stop_dprime=False):
    def loss(gen, z, eps, sigma):
        fake = AffineGaussianGenerator(*sg(tuple(gen)))
        if not stop_dprime:
            return losses.sim_generator_loss(gen(z), sigma, eps, fake.denoiser, _teacher().denoiser,
                                             distance=distance)[0]
        x0 = gen(z)   # the tempting bug: d'(y) treated as a constant
        x_t = diffusion.perturb(x0, sigma, eps)
        d_fake = fake.denoiser(x_t, sigma)
        y = d_fake - _teacher().denoiser(x_t, sigma)
        return -jnp.sum(sg(distance.grad(y)) * (d_fake - x0), axis=-1)
    return loss


def _sim_theorem_rhs(distance):
    """Per example: d/dtheta [sg(d'(y(x))) . D_theta(x)] at x = sg(x_t): the theorem's integrand."""
    def rhs(gen, z, eps, sigma):
        x = sg(diffusion.perturb(gen(z[None]), sigma[None], eps[None]))
        frozen = AffineGaussianGenerator(*sg(tuple(gen)))
        dprime = sg(distance.grad(frozen.denoiser(x, sigma) - _teacher().denoiser(x, sigma)))
        return jax.grad(lambda g: jnp.sum(dprime * g.denoiser(x, sigma)))(gen)
    return rhs


@pytest.mark.parametrize("distance", DISTANCES, ids=lambda d: d.name)
def test_sim_gradient_equals_theorem_3_1(distance):
    # L1's d' = sign(y) jumps where y = 0; its distributional derivative is not seen by autodiff.
    # With s = r the score difference y = (1 - r^2/(r^2+sigma^2)) (mu - m) never changes sign,
    # so the identity holds for L1 there; its expected scale gradient is then ~0, so only the mean
    # components are required to be informative.
    is_l1 = distance.name == "l1"
    gen = _generator(s=TEACHER["std"]) if is_l1 else _generator()
    got, want, se = _mc_check(_one(_sim(distance)), gen, _draws(1, sigma_kind="sim"),
                              per_example_ref=_sim_theorem_rhs(distance))
    informative = np.abs(want) > 10 * se + 1e-12
    assert np.all(informative[:-1] if is_l1 else informative), "uninformative: expected gradient ~ MC noise"
    _assert_within_se(got, want, se, f"(b) SIM {distance.name} vs Theorem 3.1")


def test_sim_with_stopped_dprime_is_detected():
    """Stopping d'(y) is a plausible bug (spec §6): the check above must reject it."""
    distance = distances.pseudo_huber(0.5)
    got, want, se = _mc_check(_one(_sim(distance, stop_dprime=True)), _generator(),
                              _draws(2, sigma_kind="sim"), per_example_ref=_sim_theorem_rhs(distance))
    err = np.abs(np.asarray(got - want))
    print(f"\nstopped d'(y): scale gradient {float(got[-1]):.4f} vs {float(want[-1]):.4f}, "
          f"|err|/SE {err[-1] / se[-1]:.0f}")
    assert err[-1] > 20 * se[-1], "scale gradient of the buggy variant should be far off"
    assert np.all(err[:-1] <= Z_MAX * se[:-1] + 1e-12), "the mean gradient is right even with the bug"


def test_sim_denoiser_form_is_sigma2_times_score_form():
    """-(y_D / sqrt(|y_D|^2 + c^2)) . (D_fake - x0) = sigma^2 x score-space loss with c_score = c / sigma^2."""
    gen, teacher, (z, eps, _) = _generator(), _teacher(), _draws(3, n=64)
    sigma, c = 1.3, 0.5
    x0, x_t = gen(z), diffusion.perturb(gen(z), sigma, eps)
    y_s = gen.marginal().score(x_t, sigma) - teacher.score(x_t, sigma)
    score_form = -jnp.sum(distances.pseudo_huber(c / sigma**2).grad(y_s)
                          * (gen.marginal().score(x_t, sigma) - diffusion.conditional_score(x_t, x0, sigma)), -1)
    denoiser_form, aux = losses.sim_generator_loss(x0, sigma, eps, gen.denoiser, teacher.denoiser,
                                                   distance=distances.pseudo_huber(c))
    np.testing.assert_allclose(denoiser_form, sigma**2 * score_form, rtol=1e-10)
    # aux: ||y_D||^2 = sigma^4 ||s_fake - s_teacher||^2 and ||d'(y_D)||
    np.testing.assert_allclose(aux["denoiser_gap"], sigma**4 * jnp.sum(y_s**2, -1), rtol=1e-10)
    y_d = sigma**2 * y_s
    np.testing.assert_allclose(aux["dprime_norm"], jnp.linalg.norm(distances.pseudo_huber(c).grad(y_d), axis=-1),
                               rtol=1e-10)


@pytest.mark.parametrize("method", ["di", "sim", "sid", "dmd", "sds"])
def test_aux_diagnostics_are_per_example_and_exact(method):
    """Each loss returns (value [B], aux of [B] arrays): the denoiser gap, normaliser or eps gap, gradient-free."""
    gen, teacher, (z, eps, _) = _generator(), _teacher(), _draws(6, n=32)
    sigma, x0 = 0.8, gen(z)
    fake = AffineGaussianGenerator(*sg(tuple(gen)))
    x_t = diffusion.perturb(x0, sigma, eps)
    value, aux = methods.get(method).generator_loss(x0, sigma, eps, fake.denoiser, teacher.denoiser)
    assert value.shape == (32,) and aux and all(v.shape == (32,) for v in aux.values())
    gap = jnp.sum((fake.denoiser(x_t, sigma) - teacher.denoiser(x_t, sigma)) ** 2, -1)
    if method == "sds":
        eps_teacher = (x_t - teacher.denoiser(x_t, sigma)) / sigma
        np.testing.assert_allclose(aux["eps_gap"], jnp.sum((eps_teacher - eps) ** 2, -1), rtol=1e-10)
    else:
        np.testing.assert_allclose(aux["denoiser_gap"], gap, rtol=1e-10)
    if method in ("sid", "dmd"):
        want = jnp.maximum(jnp.mean(jnp.abs(x0 - teacher.denoiser(x_t, sigma)), -1), 1e-5)
        np.testing.assert_allclose(aux["normaliser"], want, rtol=1e-10)
    # diagnostics carry no gradient
    g = jax.grad(lambda g_: sum(jnp.sum(v) for v in methods.get(method).generator_loss(
        g_(z), sigma, eps, AffineGaussianGenerator(*sg(tuple(g_))).denoiser, teacher.denoiser)[1].values()))(gen)
    np.testing.assert_array_equal(_flat(g), 0.0)


# ------------------------------------------------------------------------------------------
# (c) SIM with L2 = 2 x SiD(alpha = 1) x its normaliser (exact, not MC).

def test_sim_l2_equals_sid_alpha_1():
    teacher = GaussianMixture.create([[1.0, 0.0, -1.0], [-2.0, 1.0, 0.5]], [0.4, 0.7], [0.3, 0.7])
    gen, (z, eps, sigma) = _generator(), _draws(4, n=4096)

    def sim(g):
        fake = AffineGaussianGenerator(*sg(tuple(g)))
        return jnp.mean(losses.sim_generator_loss(g(z), sigma, eps, fake.denoiser, teacher.denoiser,
                                                  distance="l2")[0])

    def sid_unnormalised(g):
        fake = AffineGaussianGenerator(*sg(tuple(g)))
        x0 = g(z)
        norm = jnp.maximum(jnp.mean(jnp.abs(x0 - teacher.denoise(diffusion.perturb(x0, sigma, eps), sigma)), -1), 1e-5)
        return jnp.mean(sg(norm) * losses.sid_generator_loss(x0, sigma, eps, fake.denoiser, teacher.denoiser,
                                                             alpha=1.0)[0])

    g_sim, g_sid = _flat(jax.grad(sim)(gen)), _flat(jax.grad(sid_unnormalised)(gen))
    assert float(jnp.max(jnp.abs(g_sim))) > 1e-3
    np.testing.assert_allclose(g_sim, 2.0 * g_sid, rtol=1e-10)


# ------------------------------------------------------------------------------------------
# (d) SDS = DI with a Dirac generator (the fake score replaced by the forward kernel's).

def test_sds_equals_di_with_kernel_score():
    teacher, gen, (z, eps, sigma) = _teacher(), _generator(), _draws(5, n=1024)
    sds = lambda g: jnp.mean(losses.sds_generator_loss(g(z), sigma, eps, None, teacher.denoiser)[0])

    def di_dirac(g):
        x0 = g(z)
        kernel_denoiser = lambda x, s, labels: sg(x0)   # E[x0 | x_t] under a Dirac generator
        return jnp.mean(losses.di_generator_loss(x0, sigma, eps, kernel_denoiser, teacher.denoiser)[0])

    np.testing.assert_allclose(sds(gen), di_dirac(gen), rtol=1e-10)
    np.testing.assert_allclose(_flat(jax.grad(sds)(gen)), _flat(jax.grad(di_dirac)(gen)), rtol=1e-10)


# ------------------------------------------------------------------------------------------
# (e) DI App. A.1: P_theta = delta_theta x U[0,1] vs P_0. KL is infinite, IKL = theta^2 int w/(2 sigma^2).

def _log_uniform_diffused(x, sigma):
    """log density of U[0,1] * N(0, sigma^2) at x."""
    return jnp.log(norm.cdf((1 - x) / sigma) - norm.cdf(-x / sigma))


def _log_dirac_uniform(x, theta, sigma):
    return norm.logpdf(x[:, 0], theta, sigma) + _log_uniform_diffused(x[:, 1], sigma)


def _ikl_estimate(theta, sigma, eps, u):
    """MC estimate of E_sigma[sigma^2 KL(q_sigma || p_sigma)] from samples x ~ q_sigma, per example."""
    x = jnp.stack([theta + sigma * eps[:, 0], u + sigma * eps[:, 1]], -1)
    return sigma**2 * (_log_dirac_uniform(x, theta, sigma) - _log_dirac_uniform(x, 0.0, sigma))


def test_ikl_of_disjoint_supports_is_finite_and_quadratic():
    z, eps, sigma = _draws(6, n=N, dim=2)
    u = jax.random.uniform(jax.random.PRNGKey(7), (N,))
    for theta in (0.5, 1.0, 2.0):
        per = _ikl_estimate(theta, sigma, eps, u)
        est, se = per.mean(), per.std() / np.sqrt(N)
        assert np.isfinite(est)
        # sigma^2 KL_sigma = theta^2 / 2 for every sigma, so IKL(theta) / theta^2 = 1/2.
        print(f"\n(e) theta={theta}: IKL {float(est):.5f} (theory {theta**2 / 2}), SE {float(se):.2e}")
        assert abs(est - theta**2 / 2) < Z_MAX * se + 1e-12
    # Without diffusion the supports are disjoint: log p_0 = -inf on q_0's support and KL = inf;
    # the diffused KL grows as theta^2 / (2 sigma^2) as sigma -> 0.
    x = jnp.stack([jnp.full((4,), 1.0), jnp.linspace(0.1, 0.9, 4)], -1)
    for small in (1e-2, 1e-4, 1e-8):
        gap = _log_dirac_uniform(x, 1.0, small) - _log_dirac_uniform(x, 0.0, small)
        np.testing.assert_allclose(gap, 1.0 / (2 * small**2), rtol=1e-6)


def test_di_gradient_for_dirac_uniform_is_theta():
    """The DI loss with exact denoisers gives grad_theta E[sigma^2 KL_sigma] = theta."""
    z, eps, sigma = _draws(8, n=4096, dim=2)
    u = jax.random.uniform(jax.random.PRNGKey(9), (4096,))

    def uniform_posterior_mean(x, s):      # E[u | u + s eps = x], u ~ U[0,1]: truncated normal mean
        a, b = -x / s, (1 - x) / s
        return x + s * (norm.pdf(a) - norm.pdf(b)) / (norm.cdf(b) - norm.cdf(a))

    def denoiser(theta):
        return lambda x, s, labels: jnp.stack(
            [jnp.full_like(x[:, 0], theta), uniform_posterior_mean(x[:, 1], s)], -1)

    for theta in (0.5, 2.0):
        loss = lambda th: jnp.mean(losses.di_generator_loss(
            jnp.stack([jnp.full_like(u, th), u], -1), sigma, eps, denoiser(sg(th)), denoiser(0.0))[0])
        np.testing.assert_allclose(jax.grad(loss)(theta), theta, rtol=1e-10)


# ------------------------------------------------------------------------------------------
# At the teacher's own distribution every generator gradient vanishes (SDS excepted: mode-seeking).

@pytest.mark.parametrize("method", ["di", "dmd", "sid"] + [f"sim:{d.name}" for d in DISTANCES])
def test_zero_gradient_at_teacher(method):
    teacher = _teacher()
    gen = _generator(mu=TEACHER["mean"], s=TEACHER["std"])
    z, eps, sigma = _draws(10, n=2048)
    if method.startswith("sim:"):
        dist = {d.name: d for d in DISTANCES}[method[4:]]
        fn = functools.partial(losses.sim_generator_loss, distance=dist)
    else:
        fn = methods.get(method).generator_loss

    def loss(g):
        fake = AffineGaussianGenerator(*sg(tuple(g)))
        return jnp.mean(fn(g(z), sigma, eps, fake.denoiser, teacher.denoiser)[0])

    grad = _flat(jax.grad(loss)(gen))
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, 0.0, atol=1e-9)


def test_sds_gradient_at_teacher_is_not_zero():
    """SDS has no fake score: at p_g = p_teacher it still shrinks the generator (mode seeking)."""
    teacher, gen = _teacher(), _generator(mu=TEACHER["mean"], s=TEACHER["std"])
    z, eps, sigma = _draws(11, n=20_000)
    g = jax.grad(lambda g: jnp.mean(losses.sds_generator_loss(g(z), sigma, eps, None, teacher.denoiser)[0]))(gen)
    assert float(g.s) > 0.1     # gradient descent decreases s


# ------------------------------------------------------------------------------------------
# Contracts: where gradients flow, and bad arguments.

def test_gradient_flow_into_networks():
    """SIM/SiD differentiate the networks through x_t; DI/SDS/DMD do not; DSM does not touch x0."""
    x0 = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    eps = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    calls = {}

    def net(name, scale):
        def denoise(x, s, labels):
            calls[name] = x
            return scale * x
        return denoise

    def input_grad(fn):
        """Gradient w.r.t. a probe added to the networks' inputs only."""
        def f(probe):
            fake = lambda x, s, l: net("fake", 0.5)(x + probe, s, l)
            teach = lambda x, s, l: net("teacher", 0.2)(x + probe, s, l)
            return jnp.sum(fn(x0, 0.7, eps, fake, teach)[0])
        return jax.grad(f)(jnp.zeros(3))

    for name in ("sim", "sid"):
        assert float(jnp.abs(input_grad(methods.get(name).generator_loss)).sum()) > 1e-3, name
    for name in ("di", "dmd", "sds"):
        np.testing.assert_array_equal(input_grad(methods.get(name).generator_loss), 0.0)
    g_x0 = jax.grad(lambda x: jnp.sum(losses.dsm_loss(net("fake", 0.5), x, 0.7, eps)[0]))(x0)
    np.testing.assert_array_equal(g_x0, 0.0)


def test_dsm_loss_is_zero_mean_optimal_for_exact_denoiser():
    """E[DSM] is minimised by the exact denoiser: perturbing it raises the loss."""
    teacher = _teacher()
    x0 = teacher.sample(jax.random.PRNGKey(0), 50_000)
    eps = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
    sigma = diffusion.sample_sigma(jax.random.PRNGKey(2), (50_000,), "edm")
    exact = jnp.mean(losses.dsm_loss(teacher.denoiser, x0, sigma, eps)[0])
    for delta in (-0.1, 0.1):
        off = lambda x, s, l: teacher.denoiser(x, s, l) + delta
        assert jnp.mean(losses.dsm_loss(off, x0, sigma, eps)[0]) > exact


def test_bad_arguments_raise_value_errors():
    teacher, x0 = _teacher(), jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="sigma"):
        losses.di_generator_loss(x0, 0.0, x0, teacher.denoiser, teacher.denoiser)
    with pytest.raises(ValueError, match="sigma"):
        losses.sim_generator_loss(x0, jnp.array([1.0, -1.0, 1.0, 1.0]), x0, teacher.denoiser, teacher.denoiser)
    with pytest.raises(ValueError, match="x0 and noise"):
        losses.dsm_loss(teacher.denoiser, x0, 1.0, jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="distance"):
        losses.sim_generator_loss(x0, 1.0, x0, teacher.denoiser, teacher.denoiser, distance="cosine")
    with pytest.raises(ValueError, match="x0"):
        losses.dsm_loss(teacher.denoiser, jnp.zeros((4, 3), jnp.int32), 1.0, jnp.zeros((4, 3), jnp.int32))
