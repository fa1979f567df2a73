"""FID Inception: parity with torch-fidelity's TF-faithful InceptionV3 under identical random weights,
TF1 resize, and the strict weight converter."""

import importlib
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from di_jax.eval import inception, inception_convert

torch = pytest.importorskip("torch")


def _import_torch_fidelity_inception():
    """Load torch_fidelity's InceptionV3 module without its package __init__ (which needs torchvision)."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        pytest.skip("torch-fidelity not installed (pip install --no-deps torch-fidelity)")
    if "torch_fidelity" not in sys.modules or not hasattr(sys.modules["torch_fidelity"], "__path__"):
        pkg = types.ModuleType("torch_fidelity")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["torch_fidelity"] = pkg
    return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")


# pytorch-fid's FID Inception (torchvision Inception3 + FIDInception* blocks, aux_logits=False) has
# the same module names as torch-fidelity's, so its state_dict keys are these (read from the
# pytorch-fid 0.3.0 wheel). Checked against torch-fidelity's keys below.
def _pytorch_fid_keys():
    convs = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    a = ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
         "branch3x3dbl_3", "branch_pool"]
    b = ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]
    c = ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3"] + [
        f"branch7x7dbl_{i}" for i in range(1, 6)] + ["branch_pool"]
    d = ["branch3x3_1", "branch3x3_2"] + [f"branch7x7x3_{i}" for i in range(1, 5)]
    e = ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1",
         "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"]
    blocks = {"Mixed_5b": a, "Mixed_5c": a, "Mixed_5d": a, "Mixed_6a": b, "Mixed_6b": c,
              "Mixed_6c": c, "Mixed_6d": c, "Mixed_6e": c, "Mixed_7a": d, "Mixed_7b": e, "Mixed_7c": e}
    mods = convs + [f"{blk}.{br}" for blk, brs in blocks.items() for br in brs]
    keys = {"fc.weight", "fc.bias"}
    for m in mods:
        keys |= {f"{m}.conv.weight"} | {f"{m}.bn.{n}" for n in
                                          ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    return keys


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """(state_dict file, torch-fidelity model, Flax variables) sharing one set of random weights."""
    tfi = _import_torch_fidelity_inception()

    class Skeleton(tfi.FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # construct without weights, to read shapes
            return None

    tmp = tmp_path_factory.mktemp("inception")
    torch.save({}, tmp / "empty.pth")
    sd = Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(tmp / "empty.pth")).state_dict()
    gen = torch.Generator().manual_seed(0)
    rand = {}
    for k, v in sd.items():  # He-scaled convs and well-conditioned BN so activations stay O(1)
        if k.endswith("num_batches_tracked"):
            rand[k] = torch.tensor(7)
        elif k.endswith("conv.weight"):
            rand[k] = torch.randn(v.shape, generator=gen) * (2.0 / np.prod(v.shape[1:])) ** 0.5
        elif k.endswith("running_var"):
            rand[k] = torch.rand(v.shape, generator=gen) + 0.5
        elif k.endswith("bn.weight"):
            rand[k] = torch.rand(v.shape, generator=gen) + 0.5
        else:  # bn.bias, running_mean, fc.weight, fc.bias
            rand[k] = torch.randn(v.shape, generator=gen) * 0.1
    path = tmp / "pt_inception-random.pth"
    torch.save(rand, path)
    model = tfi.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased", "logits"], feature_extractor_weights_path=str(path))
    return path, rand, model, inception_convert.load_inception(path)


def test_torch_fidelity_keys_are_pytorch_fid_keys(random_weights):
    _, sd, _, _ = random_weights
    assert set(sd) == _pytorch_fid_keys()


@pytest.mark.parametrize("size", [32, 64, 299])
def test_parity_with_torch_fidelity(random_weights, size):
    _, _, model, variables = random_weights
    images = np.random.default_rng(size).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    with torch.no_grad():
        ref_pool, ref_unbiased, ref_logits = (
            t.numpy() for t in model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()))
    pool, unbiased = jax.jit(inception.InceptionV3().apply)(variables, jnp.asarray(images))
    _, logits = jax.jit(inception.InceptionV3(output_bias=True).apply)(variables, jnp.asarray(images))
    for ours, ref in ((pool, ref_pool), (unbiased, ref_unbiased), (logits, ref_logits)):
        assert ours.shape == ref.shape
        rel = np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max()
        assert rel <= 1e-4, rel
    assert np.abs(ref_pool).max() > 1e-2 and ref_pool.std() > 1e-3  # non-degenerate random network


def _tf1_resize_reference(img, size):
    """Loop form of TF1 ResizeBilinear (align_corners=False, half_pixel_centers=False), float64."""
    h, w = img.shape[:2]
    out = np.zeros((size, size, img.shape[2]))
    for i in range(size):
        y = i * h / size
        y0 = int(np.floor(y))
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(size):
            x = j * w / size
            x0 = int(np.floor(x))
            x1, fx = min(x0 + 1, w - 1), x - x0
            top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
            bot = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bot * fy
    return out


@pytest.mark.parametrize("shape", [(5, 7), (40, 31)])
def test_resize_tf1_matches_loop_reference(shape):
    img = np.random.default_rng(0).uniform(0, 255, shape + (3,))
    ours = np.asarray(inception.resize_tf1(jnp.asarray(img[None], jnp.float32), 23))[0]
    np.testing.assert_allclose(ours, _tf1_resize_reference(img, 23), atol=1e-3)


def test_resize_tf1_identity_at_299():
    img = np.random.default_rng(1).uniform(0, 255, (1, 299, 299, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(inception.resize_tf1(jnp.asarray(img))), img)


def test_rejects_float_and_bad_shape_images():
    model = inception.InceptionV3()
    with pytest.raises(TypeError, match="uint8"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 3, 32, 32), jnp.uint8))


def test_converter_is_strict(random_weights):
    _, sd, _, variables = random_weights
    shapes = inception_convert.variable_shapes()
    assert jax.tree.map(np.shape, variables) == shapes
    np.testing.assert_array_equal(variables["params"]["Conv2d_1a_3x3"]["conv"]["kernel"],
                                  sd["Conv2d_1a_3x3.conv.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                  sd["Mixed_7c.branch_pool.bn.running_var"].numpy())
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], sd["fc.weight"].numpy().T)

    bad = {k: v for k, v in sd.items() if k != "Mixed_6b.branch7x7_2.bn.running_mean"}
    bad["AuxLogits.fc.weight"] = torch.zeros(3)
    bad["fc.weight"] = torch.zeros(1000, 2048)
    with pytest.raises(inception_convert.InceptionWeightsError) as err:
        inception_convert.convert_state_dict(bad)
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing (1): Mixed_6b.branch7x7_2.bn.running_mean" in msg
    assert "unexpected (1): AuxLogits.fc.weight" in msg
    assert "mismatched (1): fc.weight" in msg


def test_weight_file_errors(tmp_path, random_weights):
    with pytest.raises(inception_convert.InceptionWeightsError, match="not found"):
        inception_convert.load_inception(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(inception_convert.InceptionWeightsError, match="cannot read"):
        inception_convert.load_inception(junk)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(inception_convert.InceptionWeightsError, match="missing"):
        inception_convert.load_inception(tmp_path / "other.pth")


def test_npz_and_safetensors_files_load_the_same(tmp_path, random_weights):
    from safetensors.numpy import save_file
    _, sd, _, variables = random_weights
    arrays = {k: v.numpy() for k, v in sd.items()}
    np.savez(tmp_path / "w.npz", **arrays)
    save_file(arrays, str(tmp_path / "w.safetensors"))
    for name in ("w.npz", "w.safetensors"):
        got = inception_convert.load_inception(tmp_path / name)
        jax.tree.map(np.testing.assert_array_equal, got, variables)


def test_pth_files_are_read_without_torch(tmp_path, random_weights, monkeypatch):
    """Zip (torch >= 1.6) and legacy (pytorch-fid's file predates the zip format) .pth files load alike."""
    path, sd, _, _ = random_weights
    expected = inception_convert.convert_state_dict(sd)
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails: the reader must not need it
    for name in (path, tmp_path / "legacy.pth"):
        jax.tree.map(np.testing.assert_array_equal, inception_convert.load_inception(name), expected)


def test_sharded_feature_fn_matches_unsharded(random_weights):
    from di_jax.eval import fid
    from di_jax.train import sharding

    _, _, _, variables = random_weights
    images = np.random.default_rng(3).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    fn = fid.make_feature_fn(variables, sharding.make_mesh())  # 8 simulated CPU devices (conftest)
    pool, logits = fn(images)
    ref_pool, ref_logits = jax.jit(inception.InceptionV3().apply)(variables, jnp.asarray(images))
    np.testing.assert_allclose(pool, ref_pool, rtol=1e-5, atol=1e-5 * np.abs(ref_pool).max())
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5 * np.abs(ref_logits).max())


def test_cli_fid_with_real_detector(random_weights, tmp_path, capsys):
    """`di-jax fid` through the real weight loading + Inception path (random weights, 8 images)."""
    import json

    from di_jax.eval import cli, fid

    path, _, model, variables = random_weights
    images = np.random.default_rng(4).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    np.savez(tmp_path / "gen.npz", images=images.transpose(0, 3, 1, 2))  # NCHW float in [-1, 1]
    ref = np.random.default_rng(5).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    ref_feats = np.asarray(jax.jit(inception.InceptionV3().apply)(variables, jnp.asarray(ref))[0], np.float64)
    fid.save_stats(tmp_path / "ref.npz", ref_feats.mean(0), np.cov(ref_feats, rowvar=False))
    code = cli.main(["di-jax fid", "--generator", str(tmp_path / "gen.npz"), "--ref", str(tmp_path / "ref.npz"),
                     "--inception", str(path), "--num", "8", "--splits", "2", "--batch", "8"])
    out, err = capsys.readouterr()
    assert code == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    # Expected, from torch-fidelity on the EDM-quantised images.
    quant = np.clip(images.astype(np.float64) * 127.5 + 128, 0, 255).astype(np.uint8)
    with torch.no_grad():
        feats, logits, _ = (t.numpy().astype(np.float64)
                            for t in model(torch.from_numpy(quant).permute(0, 3, 1, 2).contiguous()))
    expected = fid.frechet_distance(feats.mean(0), np.cov(feats, rowvar=False),
                                    ref_feats.mean(0), np.cov(ref_feats, rowvar=False))
    assert got["fid"] == pytest.approx(expected, rel=1e-3)
    assert (got["is_mean"], got["is_std"]) == pytest.approx(fid.inception_score(logits, 2), rel=1e-4, abs=1e-7)
