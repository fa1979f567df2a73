"""Tests of di_jax.augment (EDM's AugmentPipe) against numpy references written here from EDM's description."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from di_jax import augment as A

Cfg = A.AugmentConfig
RESAMPLE = jax.jit(A.resample)  # one compilation per shape/dtype instead of op-by-op dispatch
GROUPS = tuple(A.LABEL_WIDTHS)


def _images(n=3, c=3, h=8, w=8, seed=0, dtype=np.float32):
    return np.random.RandomState(seed).uniform(-1, 1, (n, c, h, w)).astype(dtype)


# ----------------------------------------------------------------------------------------------------
# numpy reference of EDM's geometric resampling (float64), including its batch-dependent reflect margin.

def _t(tx, ty):
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], np.float64)


def _s(sx, sy):
    return np.diag([sx, sy, 1.0])


def _rot(a):
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def _up_matrix(h, n_in):
    """Zero-interleave then convolve with h, keeping EDM's 2 * n_in outputs: out[n] = sum_k h[5 + n - 2k] x[k]."""
    m = np.zeros((2 * n_in, n_in))
    for n in range(2 * n_in):
        for k in range(n_in):
            if 0 <= 5 + n - 2 * k < len(h):
                m[n, k] = h[5 + n - 2 * k]
    return m


def _down_matrix(h, n_in):
    """Correlate with h at stride 2, zero padding 5: out[n] = sum_t h[t] v[2n + t - 5]."""
    n_out = (n_in + 10 - len(h)) // 2 + 1
    m = np.zeros((n_out, n_in))
    for n in range(n_out):
        for t in range(len(h)):
            if 0 <= 2 * n + t - 5 < n_in:
                m[n, 2 * n + t - 5] = h[t]
    return m


def _grid_sample_zeros(img, gx, gy):
    """torch grid_sample(bilinear, zeros, align_corners=False); img [C, H, W], normalised grid [Ho, Wo]."""
    c, h, w = img.shape
    ix, iy = ((gx + 1) * w - 1) / 2, ((gy + 1) * h - 1) / 2
    x0, y0 = np.floor(ix).astype(int), np.floor(iy).astype(int)
    out = np.zeros((c,) + gx.shape)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - np.abs(ix - xi)) * (1 - np.abs(iy - yi))
            ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            out += np.where(ok, wgt, 0) * img[:, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
    return out


def reference_resample(x, g_inv):
    """EDM's geometric execution, step by step: margin from the batch's corners, reflect pad, upsample, sample."""
    x, g_inv = np.asarray(x, np.float64), np.asarray(g_inv, np.float64)
    n, c, hh, ww = x.shape
    h = A.SYM6
    cx, cy = (ww - 1) / 2, (hh - 1) / 2
    corners = g_inv @ np.array([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]]).T  # [N, 3, 4]
    xs, ys = corners[:, 0].ravel(), corners[:, 1].ravel()
    margin = np.array([(-xs).max(), (-ys).max(), xs.max(), ys.max()]) + np.array([6 - cx, 6 - cy] * 2)
    margin = np.minimum(np.maximum(margin, 0), [ww - 1, hh - 1] * 2)
    mx0, my0, mx1, my1 = np.ceil(margin).astype(int)
    x = np.pad(x, ((0, 0), (0, 0), (my0, my1), (mx0, mx1)), mode="reflect")
    g = _t((mx0 - mx1) / 2, (my0 - my1) / 2) @ g_inv
    uh, uw = _up_matrix(h, x.shape[2]), _up_matrix(h, x.shape[3])
    x = np.einsum("ah,nchw,bw->ncab", uh, x, uw)
    g = _s(2, 2) @ g @ _s(0.5, 0.5)
    g = _t(-0.5, -0.5) @ g @ _t(0.5, 0.5)
    ho, wo = 2 * (hh + 6), 2 * (ww + 6)
    hin, win = x.shape[2:]
    theta = _s(2 / win, 2 / hin) @ g @ _s(wo / 2, ho / 2)
    bx = (2 * np.arange(wo) + 1) / wo - 1
    by = (2 * np.arange(ho) + 1) / ho - 1
    out = np.empty((n, c, ho, wo))
    for i in range(n):
        gx = theta[i, 0, 0] * bx[None, :] + theta[i, 0, 1] * by[:, None] + theta[i, 0, 2]
        gy = theta[i, 1, 0] * bx[None, :] + theta[i, 1, 1] * by[:, None] + theta[i, 1, 2]
        out[i] = _grid_sample_zeros(x[i], gx, gy)
    dh, dw = _down_matrix(h, ho), _down_matrix(h, wo)
    out = np.einsum("ah,nchw,bw->ncab", dh, out, dw)
    return out[:, :, 3:-3, 3:-3]


# ----------------------------------------------------------------------------------------------------
# Constants and layout.

def test_sym6_is_an_orthonormal_lowpass():
    h = A.SYM6
    assert len(h) == 12
    np.testing.assert_allclose(h.sum(), np.sqrt(2), atol=1e-12)
    for k in range(6):
        np.testing.assert_allclose(np.dot(h[2 * k:], h[:12 - 2 * k]), float(k == 0), atol=1e-11)


def test_label_layout_of_the_recipe():
    cfg = Cfg.edm_cifar10()
    assert (cfg.p, cfg.xflip, cfg.yflip, cfg.scale, cfg.rotate_frac, cfg.aniso, cfg.translate_frac) == (
        0.12, 1e8, 1, 1, 1, 1, 1)
    assert cfg.rotate_int == cfg.translate_int == cfg.brightness == cfg.hue == 0
    assert A.AUGMENT_DIM == A.augment_dim(cfg) == 9
    sl = A.label_slices(cfg)
    assert list(sl) == ["xflip", "yflip", "scale", "rotate_frac", "aniso", "translate_frac"]
    assert [(s.start, s.stop) for s in sl.values()] == [(0, 1), (1, 2), (2, 3), (3, 5), (5, 7), (7, 9)]
    everything = Cfg(**{name: 1.0 for name in GROUPS})
    assert A.augment_dim(everything) == 19 and A.augment_dim(Cfg()) == 0
    hash(cfg)  # static under jit


# ----------------------------------------------------------------------------------------------------
# Pixel blitting: exact.

def test_flips_are_exact():
    x = _images(n=4)
    w = jnp.array([0, 1, 1, 0])
    out = np.asarray(A.apply_params(jnp.asarray(x), {"xflip": w}, Cfg(xflip=1)))
    want = np.where(np.asarray(w)[:, None, None, None] == 1, x[..., ::-1], x)
    np.testing.assert_array_equal(out, want)
    out = np.asarray(A.apply_params(jnp.asarray(x), {"yflip": w}, Cfg(yflip=1)))
    np.testing.assert_array_equal(out, np.where(np.asarray(w)[:, None, None, None] == 1, x[:, :, ::-1], x))
    both = A.apply_params(jnp.asarray(x), {"xflip": w, "yflip": 1 - w}, Cfg(xflip=1, yflip=1))
    np.testing.assert_array_equal(np.asarray(both), np.where(np.asarray(w)[:, None, None, None] == 1,
                                                             x[..., ::-1], x[:, :, ::-1]))


def test_rotate_int_is_rot90():
    x = _images(n=4, h=6, w=6)
    k = np.array([0, 1, 2, 3])
    out = np.asarray(A.apply_params(jnp.asarray(x), {"rotate_int": jnp.asarray(k)}, Cfg(rotate_int=1)))
    for i in range(4):
        np.testing.assert_array_equal(out[i], np.rot90(x[i], k[i], axes=(1, 2)))
    labels = np.asarray(A.params_to_labels({"rotate_int": jnp.asarray(k)}, Cfg(rotate_int=1), x.shape))
    np.testing.assert_array_equal(labels, [[0, 0], [1, 0], [1, 1], [0, 1]])
    with pytest.raises(ValueError):
        A.rotate_int_pixels(jnp.zeros((1, 1, 4, 6)), jnp.zeros(1, jnp.int32))


def test_translate_int_reflects_without_edge_repeat():
    x = _images(n=5, h=6, w=7)
    t = np.array([[0, 0], [2, -1], [-3, 4], [6, -5], [-6, 5]])  # up to size - 1
    out = np.asarray(A.apply_params(jnp.asarray(x), {"translate_int": jnp.asarray(t)}, Cfg(translate_int=1)))
    for i, (tx, ty) in enumerate(t):
        pad = np.pad(x[i], ((0, 0), (5, 5), (6, 6)), mode="reflect")
        # EDM's signs: out[y, x] = in[y + ty, x - tx], i.e. content moves right by tx and up by ty.
        np.testing.assert_array_equal(out[i], pad[:, 5 + ty:5 + ty + 6, 6 - tx:6 - tx + 7])
    dot = np.zeros((1, 1, 6, 7), np.float32)
    dot[0, 0, 3, 3] = 1
    moved = np.asarray(A.translate_int_pixels(jnp.asarray(dot), jnp.array([[1, 1]])))
    assert moved[0, 0, 2, 4] == 1 and moved.sum() == 1
    lab = A.params_to_labels({"translate_int": jnp.asarray(t)}, Cfg(translate_int=1), x.shape)
    np.testing.assert_allclose(np.asarray(lab), t / (np.array([7, 6]) * 0.125), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Geometric transformations.

def test_identity_resample_returns_input():
    x = _images(n=2, h=8, w=10)
    eye = jnp.broadcast_to(jnp.eye(3), (2, 3, 3))
    np.testing.assert_allclose(np.asarray(RESAMPLE(jnp.asarray(x), eye)), x, atol=1e-5)
    with jax.enable_x64(True):
        out = RESAMPLE(jnp.asarray(x, jnp.float64), eye.astype(jnp.float64))
        np.testing.assert_allclose(np.asarray(out), x, atol=1e-12)


def test_integer_translation_through_the_resampler_is_a_reflected_shift():
    x = _images(n=2, h=8, w=8)
    t = np.array([[2.0, -1.0], [-3.0, 3.0]])  # content moves by (tx, ty), y down
    g = A.translate2d(-jnp.asarray(t[:, 0]), -jnp.asarray(t[:, 1]))
    out = np.asarray(RESAMPLE(jnp.asarray(x), g))
    for i, (tx, ty) in enumerate(t.astype(int)):
        pad = np.pad(x[i], ((0, 0), (7, 7), (7, 7)), mode="reflect")
        np.testing.assert_allclose(out[i], pad[:, 7 - ty:15 - ty, 7 - tx:15 - tx], atol=1e-5)


def test_geometric_matrix_composes_edm_factors():
    n, h, w = 3, 8, 12
    rs = np.random.RandomState(1)
    params = {"scale": rs.randn(n), "rotate_frac": rs.uniform(-np.pi, np.pi, n),
              "aniso": np.stack([rs.randn(n), rs.uniform(-np.pi, np.pi, n)], -1), "translate_frac": rs.randn(n, 2)}
    cfg = Cfg(scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    with jax.enable_x64(True):
        g = np.asarray(A.geometric_matrix({k: jnp.asarray(v) for k, v in params.items()}, cfg, h, w, jnp.float64))
    for i in range(n):
        s = 2 ** (params["scale"][i] * 0.2)
        a = 2 ** (params["aniso"][i, 0] * 0.2)
        r = params["aniso"][i, 1]
        tx, ty = params["translate_frac"][i] * [w * 0.125, h * 0.125]
        # G_inv is the inverse of the forward map: scale s, turn by -angle, stretch (a, 1/a) along the axis
        # R(-r) e_x, translate. (EDM writes rotate2d_inv(-w), rotate2d_inv(r) @ scale2d_inv(a, 1/a) @
        # rotate2d_inv(-r) and translate2d_inv(t) into G_inv.)
        forward = _t(tx, ty) @ _rot(-r) @ _s(a, 1 / a) @ _rot(r) @ _rot(-params["rotate_frac"][i]) @ _s(s, s)
        np.testing.assert_allclose(g[i], np.linalg.inv(forward), atol=1e-12)


def _geometric_case(kind):
    """(params, cfg, images) for the comparisons with the numpy reference."""
    rs = np.random.RandomState({"mild": 2, "large": 3, "shrink": 4}[kind])
    n = 3
    if kind == "mild":  # small rotation, anisotropic scale, fractional translation: EDM's margin is not clamped
        params = {"rotate_frac": rs.uniform(-0.2, 0.2, n), "aniso": np.stack([rs.randn(n), rs.uniform(-3, 3, n)], -1),
                  "translate_frac": 0.5 * rs.randn(n, 2)}
        return params, Cfg(rotate_frac=1, aniso=1, translate_frac=1), _images(n=n, c=2, h=8, w=10, seed=4)
    if kind == "large":  # a large rotation clamps EDM's margin at size - 1, where it equals ours
        params = {"scale": rs.randn(n), "rotate_frac": np.array([np.pi / 4, 2.0, -1.0]),
                  "translate_frac": rs.randn(n, 2)}
        return params, Cfg(scale=1, rotate_frac=1, translate_frac=1), _images(n=n, c=2, h=8, w=10, seed=4)
    # Shrinking by 0.6 on 32 x 32: EDM's margin (16 px) is short of what its outermost filter taps reach.
    params = {"scale": np.array([np.log2(0.6) / 0.2])}
    return params, Cfg(scale=1), _images(n=1, c=1, h=32, w=32, seed=4)


@pytest.mark.parametrize("kind", ["mild", "large", "shrink"])
def test_resample_matches_numpy_reference(kind):
    params, cfg, x = _geometric_case(kind)
    h, w = x.shape[2:]
    with jax.enable_x64(True):
        jparams = {k: jnp.asarray(v) for k, v in params.items()}
        g = A.geometric_matrix(jparams, cfg, h, w, jnp.float64)
        out = np.asarray(RESAMPLE(jnp.asarray(x, jnp.float64), g))
        via_pipeline = np.asarray(A.apply_params(jnp.asarray(x, jnp.float64), jparams, cfg))
    np.testing.assert_allclose(out, via_pipeline, atol=1e-12)
    want = reference_resample(x, np.asarray(g))
    if kind == "shrink":  # the one documented difference: EDM's zero-filled border reaches the corner pixels
        np.testing.assert_allclose(out[..., 4:-4, 4:-4], want[..., 4:-4, 4:-4], atol=1e-12)
        assert 1e-6 < np.abs(out - want).max() < 1e-4
    else:
        np.testing.assert_allclose(out, want, atol=1e-12)
    # float32 (the training dtype) stays within rounding of the float64 result
    out32 = RESAMPLE(jnp.asarray(x), jnp.asarray(np.asarray(g), jnp.float32))
    np.testing.assert_allclose(np.asarray(out32), out, atol=2e-5)


# ----------------------------------------------------------------------------------------------------
# Colour transformations.

def test_color_matrices():
    n = 5
    rs = np.random.RandomState(5)
    x = _images(n=n, c=3, seed=6)
    a = np.ones(3) / np.sqrt(3)
    cases = {
        "brightness": (rs.randn(n), lambda v, p: p + 0.2 * v),
        "contrast": (rs.randn(n), lambda v, p: p * 2 ** (0.5 * v)),
        "lumaflip": (np.array([0, 1, 1, 0, 1]), lambda v, p: p - 2 * v * a[:, None] * (a @ p)[None]),
        "saturation": (rs.randn(n), lambda v, p: a[:, None] * (a @ p) + 2 ** v * (p - a[:, None] * (a @ p))),
        "hue": (rs.uniform(-np.pi, np.pi, n), None),
    }
    for name, (vals, fn) in cases.items():
        cfg = Cfg(**{name: 1.0})
        with jax.enable_x64(True):
            out = np.asarray(A.apply_params(jnp.asarray(x, jnp.float64), {name: jnp.asarray(vals)}, cfg))
        for i in range(n):
            pix = x[i].reshape(3, -1).astype(np.float64)
            if name == "hue":  # Rodrigues rotation about the grey axis by the angle
                k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
                t = vals[i]
                want = (np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k) @ pix
            else:
                want = fn(vals[i], pix)
            np.testing.assert_allclose(out[i].reshape(3, -1), want, atol=1e-12, err_msg=name)
    # One channel: the grey value goes through the average of the RGB rows.
    cfg = Cfg(brightness=1, contrast=1)
    vals = {"brightness": jnp.asarray(rs.randn(n)), "contrast": jnp.asarray(rs.randn(n))}
    g = _images(n=n, c=1, seed=7)
    out = np.asarray(A.apply_params(jnp.asarray(g), vals, cfg))
    want = g * 2 ** (0.5 * np.asarray(vals["contrast"]))[:, None, None, None] + (
        0.2 * np.asarray(vals["brightness"]) * 2 ** (0.5 * np.asarray(vals["contrast"])))[:, None, None, None]
    np.testing.assert_allclose(out, want, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Labels, probabilities, the full pipeline.

@pytest.mark.parametrize("name", GROUPS)
def test_each_group_alone_sets_only_its_labels(name):
    cfg = Cfg(**{name: 1.0})  # p = 1: always applied
    shape = (64, 3, 8, 8)
    params = A.sample_params(jax.random.PRNGKey(0), cfg, shape)
    assert set(params) == {name}
    v = np.asarray(params[name], np.float64)
    lab = np.asarray(A.params_to_labels(params, cfg, shape))
    assert lab.shape == (64, A.LABEL_WIDTHS[name]) and lab.dtype == np.float32
    if name in ("xflip", "yflip", "lumaflip"):
        want = v[:, None]
        assert 10 < v.sum() < 54  # a fair coin
    elif name == "rotate_int":
        want = np.stack([np.isin(v, (1, 2)), np.isin(v, (2, 3))], -1)
    elif name == "translate_int":
        want = v / 1.0  # 8 px * 0.125 = 1 px range: labels are the shifts in {-1, 0, 1}
        assert set(np.unique(v)) <= {-1, 0, 1}
    elif name in ("rotate_frac", "hue"):
        want = np.stack([np.cos(v) - 1, np.sin(v)], -1)
        assert np.all(np.abs(v) <= np.pi) and np.all(v != 0)
    elif name == "aniso":
        want = np.stack([v[:, 0] * np.cos(v[:, 1]), v[:, 0] * np.sin(v[:, 1])], -1)
        assert np.all(v[:, 0] != 0) and 10 < np.sum(v[:, 1] == 0) < 54  # direction rotated half the time
    elif name == "translate_frac":
        want = v
    else:
        want = v[:, None]
    np.testing.assert_allclose(lab, want, atol=1e-6)
    # the full pipeline returns the same labels
    _, lab2 = A.augment(jax.random.PRNGKey(0), jnp.zeros(shape), cfg)
    np.testing.assert_array_equal(np.asarray(lab2), lab)


@pytest.mark.parametrize("cfg", [Cfg(), Cfg.edm_cifar10(p=0.0), dataclasses.replace(Cfg.edm_cifar10(), p=0.0,
                                                                                    rotate_int=1, hue=1)])
def test_disabled_is_identity_with_zero_labels(cfg):
    x = jnp.asarray(_images(n=3))
    out, lab = A.augment(jax.random.PRNGKey(1), x, cfg)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    assert lab.shape == (3, A.augment_dim(cfg)) and not np.any(np.asarray(lab))


def test_probabilities_monte_carlo():
    n = 20000
    cfg = dataclasses.replace(Cfg.edm_cifar10(), rotate_int=2.5, translate_int=1, brightness=1, lumaflip=5, hue=1)
    shape = (n, 3, 32, 32)
    params = jax.jit(A.sample_params, static_argnums=(1, 2))(jax.random.PRNGKey(7), cfg, shape)
    lab = np.asarray(A.params_to_labels(params, cfg, shape))
    sl = A.label_slices(cfg)
    applied = {k: np.any(lab[:, s] != 0, axis=1) for k, s in sl.items()}
    p = 0.12
    expected = {
        "xflip": 0.5,                     # 1e8 * p >= 1: always eligible, then a fair coin
        "yflip": p / 2,
        "rotate_int": 2.5 * p * 3 / 4,    # k = 0 is a no-op
        "translate_int": p * (1 - 1 / 64),  # round(4u) = 0 for |u| <= 1/8, on both axes
        "scale": p, "rotate_frac": p, "aniso": p, "translate_frac": p, "brightness": p,
        "lumaflip": min(1, 5 * p) / 2, "hue": p,
    }
    assert set(expected) == set(sl)
    for k, q in expected.items():
        tol = 5 * np.sqrt(q * (1 - q) / n)
        assert abs(applied[k].mean() - q) < tol, (k, applied[k].mean(), q)
    # distributions of the values where applied
    on = applied["scale"]
    assert abs(lab[on, sl["scale"]].std() - 1) < 0.06
    on = applied["rotate_frac"]
    angle = np.arctan2(lab[on, sl["rotate_frac"].start + 1], lab[on, sl["rotate_frac"].start] + 1)
    assert abs(np.abs(angle).mean() - np.pi / 2) < 0.1  # uniform on (-pi, pi)
    on = applied["aniso"]
    assert abs(np.mean(lab[on, sl["aniso"].start + 1] == 0) - 0.5) < 0.05  # aniso_rotate_prob, not scaled by p
    assert abs(lab[applied["translate_frac"], sl["translate_frac"]].std() - 1) < 0.06
    # groups draw independently: xflip and scale co-occur at the product rate
    both = np.mean(applied["xflip"] & applied["scale"])
    assert abs(both - 0.5 * p) < 5 * np.sqrt(0.06 / n)


def test_jit_determinism_and_batch_polymorphism():
    cfg = Cfg.edm_cifar10(p=0.5)
    run = jax.jit(A.augment, static_argnums=2)
    key = jax.random.PRNGKey(3)
    x = jnp.asarray(_images(n=6, h=8, w=8))
    out, lab = run(key, x, cfg)
    out2, lab2 = run(key, x, cfg)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out2))
    np.testing.assert_array_equal(np.asarray(lab), np.asarray(lab2))
    out3, lab3 = run(jax.random.PRNGKey(4), x, cfg)
    assert not np.allclose(np.asarray(lab), np.asarray(lab3))
    assert out.shape == x.shape and out.dtype == x.dtype and lab.shape == (6, 9) and lab.dtype == jnp.float32
    # the output is apply_params of sample_params (jitted and eager agree), and each example depends only on
    # its own parameters, not on the rest of the batch
    params = jax.jit(A.sample_params, static_argnums=(1, 2))(key, cfg, x.shape)
    np.testing.assert_array_equal(np.asarray(lab), np.asarray(A.params_to_labels(params, cfg, x.shape)))
    part = jax.jit(A.apply_params, static_argnums=2)(x[:2], {k: v[:2] for k, v in params.items()}, cfg)
    np.testing.assert_allclose(np.asarray(part), np.asarray(out[:2]), atol=1e-5)
    # another batch size and a non-square image
    out5, lab5 = run(key, jnp.asarray(_images(n=5, h=8, w=12)), cfg)
    assert out5.shape == (5, 3, 8, 12) and lab5.shape == (5, 9)
    assert np.all(np.isfinite(np.asarray(out5)))


@pytest.mark.skipif(jax.device_count() < 2, reason="needs several (simulated) devices")
def test_batch_sharded_equals_unsharded():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    n_dev = jax.device_count()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    shard = NamedSharding(mesh, PartitionSpec("data"))
    cfg = Cfg.edm_cifar10(p=0.5)
    x = jnp.asarray(_images(n=2 * n_dev, h=8, w=8, seed=9))
    key = jax.random.PRNGKey(11)
    ref_out, ref_lab = jax.jit(A.augment, static_argnums=2)(key, x, cfg)
    run = jax.jit(A.augment, static_argnums=2, out_shardings=(shard, shard))
    out, lab = run(key, jax.device_put(x, shard), cfg)
    assert out.sharding.is_equivalent_to(shard, out.ndim)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(lab), np.asarray(ref_lab))
