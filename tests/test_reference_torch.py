"""The PyTorch reference port (di_jax.bench.torch_reference) against the official EDM golden outputs,
and against the Flax networks through the official-key mapping."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from golden_nets import load_case, rel_err  # noqa: E402

from di_jax.bench.torch_reference.networks import build_network  # noqa: E402
from di_jax.convert.edm_mapping import flax_to_state_dict  # noqa: E402
from di_jax.nets import build_network as build_flax  # noqa: E402

TORCH_CASES = ["ddpmpp_uncond_vp", "ddpmpp_cond_edm", "adm_cond_edm"]   # iDDPM is not ported


def _run(net, d, labels=True, aug=True, hook=None):
    kw = {}
    if labels and "class_labels" in d.files:
        kw["class_labels"] = torch.from_numpy(d["class_labels"])
    if aug and "augment_labels" in d.files:
        kw["augment_labels"] = torch.from_numpy(d["augment_labels"])
    with torch.no_grad():
        return net(torch.from_numpy(d["x"]), torch.from_numpy(d["sigma"]), **kw).numpy()


@pytest.mark.parametrize("name", TORCH_CASES)
def test_torch_port_matches_golden(name):
    d, cfg, sd = load_case(name)
    net = build_network(cfg).eval()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    assert list(net.state_dict()) == list(sd)          # official key order too
    captured = {}
    net.model.register_forward_hook(lambda m, i, o: captured.update(model_out=o.numpy(), c_noise=i[1].numpy()))
    out = _run(net, d)
    errs = [rel_err(out[i], d["out_f64"][i]) for i in range(len(d["sigma"]))]
    e_model = rel_err(captured["model_out"], d["model_out_f64"])
    print(f"\n{name}: torch port out vs out_f64 per sigma: {['%.2e' % e for e in errs]}; model_out {e_model:.2e}")
    assert out.dtype == np.float32 and max(errs) <= 1e-5
    assert e_model <= 3e-4
    np.testing.assert_allclose(captured["c_noise"], d["c_noise"], rtol=1e-6, atol=1e-6)
    if "out_nolabel" in d.files:
        assert rel_err(_run(net, d, labels=False), d["out_nolabel"]) <= 1e-5
    if "out_noaug" in d.files:
        assert rel_err(_run(net, d, aug=False), d["out_noaug"]) <= 1e-5


def test_torch_port_matches_flax_on_random_weights():
    """Random Flax params -> official state_dict -> torch port: the same function (the bench relies on it)."""
    from di_jax.bench import network_config
    cfg = network_config("tiny")
    flax_net = build_flax(cfg)
    r = cfg["img_resolution"]
    x = np.random.default_rng(0).standard_normal((2, cfg["img_channels"], r, r)).astype(np.float32)
    sigma = np.array([0.3, 7.0], np.float32)
    labels = np.eye(cfg["label_dim"], dtype=np.float32)[[1, 4]]
    params = flax_net.init(jax.random.PRNGKey(1), x, sigma, class_labels=labels)["params"]
    # make zero-initialised layers non-trivial
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [leaf + 0.05 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)])
    want = np.asarray(flax_net.apply({"params": params}, x, sigma, class_labels=labels))
    net = build_network(cfg).eval()
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in flax_to_state_dict(params, cfg).items()},
                        strict=True)
    with torch.no_grad():
        got = net(torch.from_numpy(x), torch.from_numpy(sigma), class_labels=torch.from_numpy(labels)).numpy()
    assert rel_err(got, want) <= 1e-5
