"""EDM networks vs the official PyTorch outputs (golden files) and layer-level PyTorch references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden_nets import CASES, load_case, rel_err

from di_jax.convert.edm_mapping import state_dict_to_flax
from di_jax.nets import Conv2d, build_network


@pytest.fixture(scope="module", params=CASES)
def case(request):
    d, cfg, sd = load_case(request.param)
    net, params = build_network(cfg), state_dict_to_flax(sd, cfg)
    fn = jax.jit(lambda p, x, s, c, a: net.apply({"params": p}, x, s, class_labels=c, augment_labels=a,
                                                  mutable=["intermediates"]))
    return request.param, d, cfg, net, params, fn


def test_golden_outputs(case):
    name, d, cfg, net, params, fn = case
    c = d["class_labels"] if "class_labels" in d.files else None
    a = d["augment_labels"] if "augment_labels" in d.files else None
    out, st = fn(params, d["x"], d["sigma"], c, a)
    model_out = np.asarray(st["intermediates"]["model_out"][0]).transpose(0, 3, 1, 2)
    assert out.dtype == jnp.float32 and out.shape == d["x"].shape
    errs = [rel_err(out[i], d["out_f64"][i]) for i in range(len(d["sigma"]))]  # one per sigma
    e_model = rel_err(model_out, d["model_out_f64"])
    print(f"\n{name}: out vs out_f64 per sigma {d['sigma'].tolist()}: {['%.2e' % e for e in errs]}; "
          f"model_out vs model_out_f64 {e_model:.2e}")
    assert max(errs) <= 1e-5
    assert e_model <= 3e-4
    np.testing.assert_allclose(st["intermediates"]["c_noise"][0], d["c_noise"], rtol=1e-6, atol=1e-6)
    if "out_nolabel" in d.files:
        out_nl, _ = fn(params, d["x"], d["sigma"], None, a)
        assert rel_err(out_nl, d["out_nolabel"]) <= 1e-5
        assert rel_err(out_nl, d["out_f64"]) > 1e-3  # the labels matter
    if "out_noaug" in d.files:
        out_na, _ = fn(params, d["x"], d["sigma"], c, None)
        assert rel_err(out_na, d["out_noaug"]) <= 1e-5


def test_scalar_sigma_and_nhwc(case):
    name, d, cfg, net, params, _ = case
    x, s = d["x"][:2], float(d["sigma"][1])
    kw = {"class_labels": d["class_labels"][:2]} if "class_labels" in d.files else {}
    a = net.apply({"params": params}, x, s, **kw)
    b = net.apply({"params": params}, x.transpose(0, 2, 3, 1), np.full(2, s, np.float32), layout="NHWC", **kw)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b).transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_close_to_float32():
    d, cfg, sd = load_case("ddpmpp_cond_edm")
    params = state_dict_to_flax(sd, cfg)
    kw = dict(class_labels=d["class_labels"], augment_labels=d["augment_labels"])
    out = build_network(dict(cfg, dtype="bfloat16")).apply({"params": params}, d["x"], d["sigma"], **kw)
    assert out.dtype == jnp.float32
    err = rel_err(out, d["out_f64"])
    assert 1e-5 < err < 5e-2, err  # bf16 trunk: visibly lower precision, still the same function


def test_dropout_and_label_dropout():
    d, cfg, sd = load_case("ddpmpp_cond_edm")
    params = state_dict_to_flax(sd, cfg)
    kw = dict(class_labels=d["class_labels"])
    x, s = d["x"], d["sigma"]
    net = build_network(dict(cfg, dropout=0.5))
    run = lambda k, train: net.apply({"params": params}, x, s, train=train, rngs={"dropout": jax.random.PRNGKey(k)},
                                     **kw)
    assert rel_err(run(0, False), d["out_noaug"]) <= 1e-5  # eval mode ignores dropout
    assert not np.allclose(run(0, True), run(1, True))
    np.testing.assert_array_equal(run(0, True), run(0, True))
    # label_dropout = 1 drops every label row: same as zero labels (official: zeros, bias still added)
    net = build_network(dict(cfg, label_dropout=1.0))
    out = net.apply({"params": params}, x, s, train=True, rngs={"dropout": jax.random.PRNGKey(0)}, **kw)
    zero = net.apply({"params": params}, x, s, class_labels=np.zeros_like(d["class_labels"]))
    np.testing.assert_allclose(out, zero, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("taps", [[1, 1], [1, 3, 3, 1]])
@pytest.mark.parametrize("mode", ["up", "down", "fused_down", "fused_up"])
def test_conv2d_resampling_matches_torch(taps, mode):
    """Resampling Conv2d (spec 1.3) against torch.nn.functional written from the spec."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.RandomState(0)
    cin, cout, k = 4, 6, 3
    x = rng.randn(2, cin, 8, 8).astype(np.float32)
    w, b = rng.randn(cout, cin, k, k).astype(np.float32), rng.randn(cout).astype(np.float32)
    r = np.asarray(taps, np.float32)
    f = torch.from_numpy(np.outer(r, r) / r.sum() ** 2).float()[None, None]
    pw, pf = k // 2, (len(taps) - 1) // 2
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    up, down, fused = "up" in mode, "down" in mode, mode.startswith("fused")
    if mode == "fused_up":
        y = F.conv_transpose2d(tx, (4 * f).tile(cin, 1, 1, 1), groups=cin, stride=2, padding=max(pf - pw, 0))
        y = F.conv2d(y, tw, padding=max(pw - pf, 0))
    elif mode == "fused_down":
        y = F.conv2d(F.conv2d(tx, tw, padding=pw + pf), f.tile(cout, 1, 1, 1), groups=cout, stride=2)
    elif up:
        y = F.conv2d(F.conv_transpose2d(tx, (4 * f).tile(cin, 1, 1, 1), groups=cin, stride=2, padding=pf), tw,
                     padding=pw)
    else:
        y = F.conv2d(F.conv2d(tx, f.tile(cin, 1, 1, 1), groups=cin, stride=2, padding=pf), tw, padding=pw)
    want = (y + torch.from_numpy(b)[None, :, None, None]).numpy()
    conv = Conv2d(cout, k, up=up, down=down, resample_filter=tuple(taps), fused_resample=fused)
    params = {"kernel": w.transpose(2, 3, 1, 0), "bias": b}
    got = conv.apply({"params": params}, x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 5, 2)])
def test_box_filter_fast_path_equals_depthwise_conv(shape):
    """[1, 1] resampling as average pooling / nearest upsampling: same values and gradients as the FIR conv."""
    from di_jax.nets import layers

    x = np.random.RandomState(1).randn(*shape).astype(np.float32)
    f = layers.resample_filter([1, 1])
    conv_up = lambda v: layers._depthwise(v, 4 * f[::-1, ::-1], 1, 1, 2)
    conv_down = lambda v: layers._depthwise(v, f, 2, 0, 1)
    for fast, ref in ((lambda v: layers.upsample(v, f, 0), conv_up), (lambda v: layers.downsample(v, f, 0), conv_down)):
        y, y_ref = fast(x), ref(x)
        assert y.shape == y_ref.shape
        np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
        g = np.random.RandomState(2).randn(*y.shape).astype(np.float32)
        np.testing.assert_allclose(jax.vjp(fast, x)[1](g)[0], jax.vjp(ref, x)[1](g)[0], rtol=1e-6, atol=1e-6)
