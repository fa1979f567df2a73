"""FID / IS maths, streaming sharded statistics, stats files, tfds reference stats and the CLI."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from di_jax.eval import cli, fid
from di_jax.train import sharding


class TinyDetector(nn.Module):
    """Stand-in for Inception (uint8 in, (features, logits) out) to keep sharding tests fast."""

    @nn.compact
    def __call__(self, images):
        assert images.dtype == jnp.uint8
        x = (images.astype(jnp.float32) - 128.0) / 128.0
        x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2))(x))
        feats = jnp.concatenate([x.mean((1, 2)), x.max((1, 2))], -1)
        return feats, nn.Dense(10)(feats)


@pytest.fixture(scope="module")
def tiny():
    model = TinyDetector()
    return model, model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3), jnp.uint8))


def _reference_fd(mu1, s1, mu2, s2):
    """Textbook float64 FD with scipy.linalg.sqrtm (independent of fid.frechet_distance)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _reference_is(logits, splits):
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for i in range(splits):
        part = p[i * len(p) // splits:(i + 1) * len(p) // splits]
        py = part.mean(0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
    return np.mean(scores), np.std(scores)


def _gaussian_stats(rng, d, n, shift=0.0):
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + shift
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("d,n", [(16, 200), (64, 500)])
def test_frechet_distance_matches_scipy(d, n):
    rng = np.random.default_rng(d)
    a, b = _gaussian_stats(rng, d, n), _gaussian_stats(rng, d, n, shift=0.2)
    ours, ref = fid.frechet_distance(*a, *b), _reference_fd(*a, *b)
    assert abs(ours - ref) <= 1e-6 * abs(ref), (ours, ref)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    mu, sigma = _gaussian_stats(np.random.default_rng(0), 128, 1000)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)
    # Rank-deficient covariance (N < D), where sqrtm(S1 S2) is ill-conditioned: still ~0 and real.
    mu, sigma = _gaussian_stats(np.random.default_rng(1), 256, 50)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)


def test_frechet_distance_rejects_bad_stats():
    mu, sigma = np.zeros(4), np.eye(4)
    with pytest.raises(fid.FidError, match="shapes"):
        fid.frechet_distance(mu, sigma, np.zeros(5), np.eye(5))
    with pytest.raises(fid.FidError, match="NaN"):
        fid.frechet_distance(mu, sigma * np.nan, mu, sigma)


def test_inception_score_uniform_is_one_and_matches_reference():
    assert fid.inception_score(np.zeros((100, 1008))) == pytest.approx((1.0, 0.0), abs=1e-12)
    logits = np.random.default_rng(0).normal(size=(1003, 50)) * 3  # 1003: uneven splits
    np.testing.assert_allclose(fid.inception_score(logits, 10), _reference_is(logits, 10), rtol=1e-10)
    # Streaming in odd chunks gives the same result.
    state = fid.is_init(1003, 10, 50)
    for s in range(0, 1003, 77):
        state = fid.is_update(state, logits[s:s + 77])
    np.testing.assert_allclose(fid.is_finalize(state), _reference_is(logits, 10), rtol=1e-10)
    with pytest.raises(fid.FidError, match="declared"):
        fid.is_finalize(fid.is_update(fid.is_init(1003, 10, 50), logits[:10]))


def test_stats_update_matches_numpy():
    x = np.random.default_rng(0).normal(size=(300, 7)).astype(np.float32)
    stats = fid.stats_init(7)
    for s in range(0, 300, 64):
        stats = fid.stats_update(stats, x[s:s + 64])
    mu, sigma = fid.stats_finalize(stats)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-13)


def test_to_uint8_follows_edm():
    x = jnp.array([-1.5, -1.0, -0.5, 0.0, 0.004, 0.5, 1.0, 2.0])
    np.testing.assert_array_equal(np.asarray(fid.to_uint8(x.astype(jnp.bfloat16))),
                                  np.asarray(fid.to_uint8(x.astype(jnp.bfloat16).astype(jnp.float32))))
    expected = np.clip(np.asarray(x, np.float64) * 127.5 + 128, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(fid.to_uint8(x)), expected)
    u = jnp.arange(5, dtype=jnp.uint8)
    assert fid.to_uint8(u) is u


def test_sharded_streaming_stats_equal_single_pass(tiny):
    model, variables = tiny
    assert jax.device_count() == 8  # conftest
    images = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    # Reference: one pass on one device, no sharding, float64 NumPy statistics.
    feats, logits = jax.jit(model.apply)(variables, images)
    feats, logits = np.asarray(feats, np.float64), np.asarray(logits, np.float64)
    fn = fid.make_feature_fn(variables, sharding.make_mesh(), model=model)
    stats, is_state = fid.accumulate((images[s:s + 12] for s in range(0, 50, 12)), fn, num=50, splits=5)
    mu, sigma = fid.stats_finalize(stats)
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fid.is_finalize(is_state), _reference_is(logits, 5), rtol=1e-5)
    f12, _ = fn(images[:12])  # 12 is not a multiple of 8: padded then cropped
    assert f12.shape == (12, feats.shape[1])


def test_compute_fid_with_sample_fn(tiny):
    model, variables = tiny
    fn = fid.make_feature_fn(variables, model=model)

    def sample_fn(rng, n):
        return jax.random.uniform(rng, (n, 8, 8, 3), minval=-1, maxval=1)

    ref = fid.compute_fid(sample_fn, 40, (np.zeros(32), np.eye(32)), feature_fn=fn, batch_size=16, splits=4)
    # Same samples by hand (EDM quantisation) -> same number.
    rng = jax.random.key(0)
    imgs = np.concatenate([np.asarray(fid.to_uint8(sample_fn(jax.random.fold_in(rng, i), 16))) for i in range(3)])
    feats, logits = (np.asarray(a, np.float64) for a in jax.jit(model.apply)(variables, imgs[:40]))
    expected = _reference_fd(feats.mean(0), np.cov(feats, rowvar=False), np.zeros(32), np.eye(32))
    assert ref["fid"] == pytest.approx(expected, rel=1e-4)
    assert (ref["is_mean"], ref["is_std"]) == pytest.approx(_reference_is(logits, 4), rel=1e-4)
    with pytest.raises(fid.FidError, match="NaN"):
        fid.compute_fid(lambda r, n: jnp.full((n, 8, 8, 3), jnp.nan), 16, (np.zeros(32), np.eye(32)),
                        feature_fn=fn, batch_size=16, splits=0)


def test_stats_file_roundtrip_and_errors(tmp_path):
    mu, sigma = _gaussian_stats(np.random.default_rng(0), 6, 40)
    fid.save_stats(tmp_path / "s.npz", mu, sigma)
    got = fid.load_stats(tmp_path / "s.npz")
    np.testing.assert_array_equal(got[0], mu)
    np.testing.assert_array_equal(got[1], sigma)
    with pytest.raises(fid.FidError, match="not found"):
        fid.load_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "wrong.npz", mean=mu)
    with pytest.raises(fid.FidError, match="need mu, sigma"):
        fid.load_stats(tmp_path / "wrong.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(fid.FidError, match="cannot read"):
        fid.load_stats(tmp_path / "junk.npz")


@pytest.fixture(scope="module")
def fake_tfds(tmp_path_factory):
    """A tiny image dataset prepared locally with tfds (no network)."""
    import tensorflow_datasets as tfds

    class DiJaxFakeImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(num_classes=2)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            rng = np.random.default_rng(0)
            for i in range(30):
                yield i, {"image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "label": i % 2}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = DiJaxFakeImages(data_dir=data_dir)
    builder.download_and_prepare()
    images = np.stack([ex["image"] for ex in tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False))])
    return "di_jax_fake_images", data_dir, images


def test_stats_from_tfds(tiny, fake_tfds):
    model, variables = tiny
    name, data_dir, images = fake_tfds
    fn = fid.make_feature_fn(variables, model=model)
    mu, sigma = fid.stats_from_tfds(name, fn, data_dir=data_dir, batch_size=7)
    feats = np.asarray(jax.jit(model.apply)(variables, images)[0], np.float64)
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-4, atol=1e-6)
    with pytest.raises(fid.FidError, match="not prepared"):
        fid.stats_from_tfds("cifar10", fn, data_dir=str(data_dir) + "/empty")


# ----------------------------------------------------------------------------- CLI


def _run_cli(argv, capsys):
    code = cli.main(["di-jax fid"] + argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_errors_are_one_line(tmp_path, capsys):
    np.savez(tmp_path / "imgs.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    fid.save_stats(tmp_path / "ref.npz", np.zeros(2048), np.eye(2048))
    cases = [
        ["--generator", str(tmp_path / "imgs.npz"), "--ref", str(tmp_path / "ref.npz"),
         "--inception", str(tmp_path / "missing.pth")],
        ["--generator", str(tmp_path / "imgs.npz"), "--ref", str(tmp_path / "nope.npz"),
         "--inception", str(tmp_path / "missing.pth")],
        ["--generator", str(tmp_path / "nothing"), "--ref", str(tmp_path / "ref.npz"),
         "--inception", str(tmp_path / "x.pth")],
        ["--ref-from-tfds", "cifar10", "--tfds-data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o.npz"),
         "--inception", str(tmp_path / "x.pth")],
        ["--ref-from-tfds", "cifar10", "--inception", str(tmp_path / "x.pth")],  # no --out
        ["--generator", str(tmp_path / "imgs.npz")],  # no --ref
    ]
    for argv in cases:
        code, out, err = _run_cli(argv, capsys)
        assert code == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("di-jax fid: error: "), err
    code, _, err = _run_cli(cases[0], capsys)
    assert "Inception weight file not found" in err
    code, _, err = _run_cli(cases[3], capsys)
    assert "not prepared" in err


def test_cli_end_to_end_with_tiny_detector(tmp_path, capsys, monkeypatch, tiny, fake_tfds):
    """Full CLI flow (tfds stats -> .npz images -> FID) with the detector swapped for TinyDetector."""
    from PIL import Image

    model, variables = tiny
    name, data_dir, images = fake_tfds
    monkeypatch.setattr(cli, "_feature_fn", lambda args: fid.make_feature_fn(variables, model=model))
    code, out, err = _run_cli(["--ref-from-tfds", name, "--tfds-data-dir", data_dir,
                               "--out", str(tmp_path / "ref.npz"), "--inception", "unused"], capsys)
    assert code == 0, err
    mu, sigma = fid.load_stats(tmp_path / "ref.npz")
    np.savez(tmp_path / "same.npz", images=images)
    code, out, err = _run_cli(["--generator", str(tmp_path / "same.npz"), "--ref", str(tmp_path / "ref.npz"),
                               "--num", "30", "--inception", "unused", "--splits", "3"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert abs(result["fid"]) < 1e-6 * np.trace(sigma) and result["num"] == 30
    (tmp_path / "png").mkdir()
    for i, img in enumerate(images[:20]):
        Image.fromarray(img).save(tmp_path / "png" / f"{i:05d}.png")
    code, out, err = _run_cli(["--generator", str(tmp_path / "png"), "--ref", str(tmp_path / "ref.npz"),
                               "--num", "20", "--inception", "unused", "--batch", "6"], capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["fid"] > 0
    code, out, err = _run_cli(["--generator", str(tmp_path / "png"), "--ref", str(tmp_path / "ref.npz"),
                               "--num", "50", "--inception", "unused"], capsys)
    assert code == 2 and "only 20" in err
