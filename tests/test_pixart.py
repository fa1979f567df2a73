"""PixArt-α transformer and SD VAE vs diffusers 0.42.1 (golden files), the diffusers-folder converter,
and the discrete-time DDPM teacher wrapper.

Golden data: tests/data/pixart (copied from the project's shared golden vectors; see its README.md).
"""

import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from di_jax.convert.diffusers_folder import (
    WEIGHTS,
    WEIGHTS_BIN,
    WEIGHTS_INDEX,
    flax_to_torch_name,
    load_diffusers_model,
    load_pixart_pipeline,
    torch_to_flax_path,
)
from di_jax.convert.errors import CheckpointError
from di_jax.nets.autoencoder_kl import AutoencoderKL
from di_jax.nets.pixart import PixArtTransformer2DModel, sincos_pos_embed
from di_jax.teachers import discrete
from di_jax.teachers.discrete import TextCondition

TOL = 1e-5   # of max|ref|, against diffusers' float64 outputs
DATA = pathlib.Path(__file__).parent / "data" / "pixart"


@pytest.fixture(scope="module")
def pixart_dir():
    return DATA / "pixart_tiny"


@pytest.fixture(scope="module")
def golden():
    return np.load(DATA / "pixart_tiny.npz")


@pytest.fixture(scope="module")
def transformer(pixart_dir):
    return load_diffusers_model(pixart_dir / "transformer")


@pytest.fixture(scope="module")
def vae(pixart_dir):
    return load_diffusers_model(pixart_dir / "vae")


def rel_err(got, want) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


@jax.jit(static_argnums=0)
def _apply(module, params, *args):
    return module.apply({"params": params}, *args)


@jax.jit(static_argnums=(0, 3))
def _vae(module, params, x, method):
    return module.apply({"params": params}, x, method=method)


def run_transformer(module, params, g):
    """The transformer on the golden inputs (jitted: one compilation per module, reused across tests)."""
    return _apply(module, params, g["latents"], g["text"], g["timestep"], g["text_mask"])


def copy_model(src, dst):
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def one_line_error(fn, *words):
    with pytest.raises(CheckpointError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


# ---------------------------------------------------------------- parity with diffusers

def test_transformer_parity_float32(transformer, golden):
    module, params = transformer
    assert isinstance(module, PixArtTransformer2DModel) and module.num_layers == 2 and module.out_channels == 8
    out = run_transformer(module, params, golden)
    assert out.shape == (2, 8, 8, 8) and out.dtype == jnp.float32
    err = rel_err(out, golden["transformer_out_f64"])
    print(f"\ntransformer float32 vs diffusers float64: {err:.2e} of max|ref|")
    assert err <= TOL


def test_vae_parity_float32(vae, golden):
    module, params = vae
    assert isinstance(module, AutoencoderKL) and module.scaling_factor == pytest.approx(0.18215)
    dec = _vae(module, params, golden["vae_latents"], "decode")
    mean, logvar = _vae(module, params, golden["image"], "encode")
    errs = [rel_err(dec, golden["decode_out_f64"]), rel_err(mean, golden["encode_mean_f64"]),
            rel_err(logvar, golden["encode_logvar_f64"])]
    print(f"\nVAE float32 vs diffusers float64: decode {errs[0]:.2e}, mean {errs[1]:.2e}, logvar {errs[2]:.2e}")
    assert dec.shape == (2, 3, 16, 16) and mean.shape == logvar.shape == (2, 4, 8, 8)
    assert max(errs) <= TOL


def test_parity_float64(transformer, vae, golden):
    """The same checks with float64 compute (jax_enable_x64 only inside this test)."""
    with jax.enable_x64(True):
        f64 = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)
        g = {k: (golden[k].astype(np.float64) if golden[k].dtype == np.float32 else golden[k]) for k in golden.files}
        t_mod, t_par = transformer
        out = run_transformer(t_mod.clone(dtype=jnp.float64), f64(t_par), g)
        v_mod, v_par = vae
        v_mod = v_mod.clone(dtype=jnp.float64)
        dec = _vae(v_mod, f64(v_par), g["vae_latents"], "decode")
        mean, logvar = _vae(v_mod, f64(v_par), g["image"], "encode")
        assert out.dtype == dec.dtype == mean.dtype == jnp.float64
    errs = {"transformer": rel_err(out, golden["transformer_out_f64"]),
            "decode": rel_err(dec, golden["decode_out_f64"]), "mean": rel_err(mean, golden["encode_mean_f64"]),
            "logvar": rel_err(logvar, golden["encode_logvar_f64"])}
    print("\nfloat64 vs diffusers float64: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    # the transformer's timestep embedding is float32 in diffusers whatever the dtype (and so here)
    assert errs["transformer"] <= TOL
    assert max(errs["decode"], errs["mean"], errs["logvar"]) <= 1e-12


def test_text_mask_and_remat(transformer, golden):
    """Padded tokens are invisible, kept ones are not; nn.remat and bf16 compute give the same function."""
    module, params = transformer
    ref = run_transformer(module, params, golden)
    g = dict(golden)
    text = golden["text"].copy()
    text[1, 4:] += 5.0   # the second prompt is padded after 4 tokens
    g["text"] = text
    out = run_transformer(module, params, g)
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(ref[0]))
    assert rel_err(out[1], np.asarray(ref[1])) < 1e-6
    text[1, 0] += 1.0
    assert rel_err(run_transformer(module, params, g)[1], np.asarray(ref[1])) > 1e-3
    assert rel_err(run_transformer(module.clone(remat=True), params, golden), np.asarray(ref)) < 1e-6
    bf16 = run_transformer(module.clone(dtype=jnp.bfloat16), params, golden)
    assert bf16.dtype == jnp.bfloat16 and rel_err(bf16, golden["transformer_out_f64"]) < 5e-2


def test_pos_embed_layout():
    """Token (i, j) holds [sin, cos](col j ω) then [sin, cos](row i ω); positions are scaled by base/size/scale."""
    e = sincos_pos_embed(8, 2, 3, base_size=4, interpolation_scale=2.0)
    assert e.shape == (6, 8) and e.dtype == np.float32
    omega = 1.0 / 10000.0 ** (np.arange(2) / 2.0)
    row, col = 1, 2
    r, c = row / (2 / 4) / 2.0, col / (3 / 4) / 2.0
    want = np.concatenate([np.sin(c * omega), np.cos(c * omega), np.sin(r * omega), np.cos(r * omega)])
    np.testing.assert_allclose(e[row * 3 + col], want, rtol=1e-6, atol=1e-7)


def test_additional_conditions_vs_diffusers(tmp_path):
    """The 1024-px variant (resolution / aspect-ratio embeddings), a non-square input and interpolation
    scale 2, against diffusers itself (a test-only reference; skipped without it)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8, num_layers=1,
        cross_attention_dim=24, sample_size=8, patch_size=2, caption_channels=10, use_additional_conditions=True,
        interpolation_scale=2,
    ).double().eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref.save_pretrained(tmp_path / "m", safe_serialization=True)
    rng = np.random.default_rng(1)
    x, text = rng.standard_normal((2, 4, 6, 10)), rng.standard_normal((2, 3, 10))
    mask, t = np.array([[1, 1, 0], [1, 1, 1]], np.float64), np.array([10, 700])
    res, ar = np.array([[512.0, 768.0], [1024.0, 1024.0]]), np.array([[1.5], [1.0]])
    with torch.no_grad():
        want = ref(torch.from_numpy(x), encoder_hidden_states=torch.from_numpy(text), timestep=torch.from_numpy(t),
                   encoder_attention_mask=torch.from_numpy(mask),
                   added_cond_kwargs={"resolution": torch.from_numpy(res), "aspect_ratio": torch.from_numpy(ar)}
                   ).sample.numpy()
    module, params = load_diffusers_model(tmp_path / "m")
    assert module.use_additional_conditions and module.interpolation_scale == 2
    out = module.apply({"params": params}, x.astype(np.float32), text.astype(np.float32), t, mask,
                       resolution=res.astype(np.float32), aspect_ratio=ar.astype(np.float32))
    assert out.shape == (2, 8, 6, 10)
    assert rel_err(out, want) <= TOL


# ---------------------------------------------------------------- the converter

def test_key_table_round_trip(transformer, vae):
    for module, params in (transformer, vae):
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            names = tuple(k.key for k in path)
            assert torch_to_flax_path(flax_to_torch_name(names), leaf.ndim) == names
    assert flax_to_torch_name(("transformer_blocks_1", "attn1", "to_out_0", "kernel")) == \
        "transformer_blocks.1.attn1.to_out.0.weight"
    assert flax_to_torch_name(("adaln_single", "emb", "timestep_embedder", "linear_1", "kernel")) == \
        "adaln_single.emb.timestep_embedder.linear_1.weight"
    assert torch_to_flax_path("encoder.mid_block.attentions.0.group_norm.weight", 1) == \
        ("encoder", "mid_block", "attentions_0", "group_norm", "scale")
    assert torch_to_flax_path("encoder.mid_block.7.weight", 2) is None   # an index under no known list


def test_pipeline_folder(pixart_dir, transformer, vae):
    t_mod, t_par, v_mod, v_par = load_pixart_pipeline(pixart_dir)
    assert t_mod == transformer[0] and v_mod == vae[0]
    jax.tree_util.tree_map(np.testing.assert_array_equal, t_par, transformer[1])
    jax.tree_util.tree_map(np.testing.assert_array_equal, v_par, vae[1])
    teacher = discrete.load_pixart_teacher(pixart_dir)      # a pipeline folder: its transformer/
    assert teacher.module == transformer[0] and teacher.data_shape == (4, 8, 8)
    with pytest.raises(ValueError, match="not a PixArt transformer"):
        discrete.load_pixart_teacher(pixart_dir / "vae")


def test_sharded_index_folder(tmp_path, pixart_dir, transformer):
    src = pixart_dir / "transformer"
    sd = load_file(src / WEIGHTS)
    keys = sorted(sd)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(src / "config.json", folder / "config.json")
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, folder / name, metadata={"format": "pt"})
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in sd.values()))},
             "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (folder / WEIGHTS_INDEX).write_text(json.dumps(index))
    module, params = load_diffusers_model(folder)
    assert module == transformer[0]
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, transformer[1])

    moved = dict(index, weight_map=dict(index["weight_map"], **{keys[0]: "diffusion_pytorch_model-00002-of-00002"
                                                                          ".safetensors"}))
    (folder / WEIGHTS_INDEX).write_text(json.dumps(moved))
    one_line_error(lambda: load_diffusers_model(folder), keys[0], "not in its shard")
    escape = dict(index, weight_map=dict(index["weight_map"], **{keys[0]: "../outside.safetensors"}))
    (folder / WEIGHTS_INDEX).write_text(json.dumps(escape))
    one_line_error(lambda: load_diffusers_model(folder), keys[0], "same folder")


def test_bin_folder_without_torch_reader(tmp_path, pixart_dir, vae):
    torch = pytest.importorskip("torch")
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(pixart_dir / "vae" / "config.json", folder / "config.json")
    sd = load_file(pixart_dir / "vae" / WEIGHTS)
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, folder / WEIGHTS_BIN)
    module, params = load_diffusers_model(folder)
    assert module == vae[0]
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, vae[1])


def _rewrite(folder, change):
    sd = load_file(folder / WEIGHTS)
    change(sd)
    (folder / WEIGHTS).unlink()
    save_file(sd, folder / WEIGHTS)


def test_one_line_errors(tmp_path, pixart_dir):
    t = copy_model(pixart_dir / "transformer", tmp_path / "t")
    key = "transformer_blocks.1.attn2.to_k.weight"
    _rewrite(t, lambda sd: sd.__setitem__(key, np.zeros((32, 31), np.float32)))
    one_line_error(lambda: load_diffusers_model(t), key, "(32, 31)", "(32, 32)")

    v = copy_model(pixart_dir / "vae", tmp_path / "v")
    key = "decoder.up_blocks.1.resnets.0.conv1.bias"
    _rewrite(v, lambda sd: sd.pop(key))
    one_line_error(lambda: load_diffusers_model(v), "lacks tensor", key)
    _rewrite(v, lambda sd: sd.update({key: np.zeros(16, np.float32), "decoder.extra.weight": np.zeros(3, np.float32)}))
    one_line_error(lambda: load_diffusers_model(v), "unexpected tensor", "decoder.extra.weight")

    c = copy_model(pixart_dir / "transformer", tmp_path / "c")
    cfg = json.loads((c / "config.json").read_text())
    (c / "config.json").write_text(json.dumps(dict(cfg, qk_norm="rms_norm")))
    one_line_error(lambda: load_diffusers_model(c), "qk_norm", "unknown")
    (c / "config.json").write_text(json.dumps(dict(cfg, activation_fn="geglu")))
    one_line_error(lambda: load_diffusers_model(c), "activation_fn", "geglu")
    (c / "config.json").write_text(json.dumps(dict(cfg, _class_name="UNet2DConditionModel")))
    one_line_error(lambda: load_diffusers_model(c), "UNet2DConditionModel", "not supported")
    (c / "config.json").write_text(json.dumps(dict(cfg, num_layers=3)))   # config and weights disagree
    one_line_error(lambda: load_diffusers_model(c), "lacks tensor", "transformer_blocks.2.")
    (c / WEIGHTS).unlink()
    (c / "config.json").write_text(json.dumps(cfg))
    one_line_error(lambda: load_diffusers_model(c), WEIGHTS_INDEX, WEIGHTS_BIN)


def test_nonfinite_weights_refused(tmp_path, pixart_dir):
    v = copy_model(pixart_dir / "vae", tmp_path / "v")
    _rewrite(v, lambda sd: sd["quant_conv.bias"].__setitem__(0, np.nan))
    one_line_error(lambda: load_diffusers_model(v), "NaN", "quant_conv.bias")
    assert load_diffusers_model(v, allow_nonfinite=True)[0].latent_channels == 4


# ---------------------------------------------------------------- the discrete DDPM teacher

def test_alphas_cumprod_and_sigmas(golden):
    a = discrete.linear_alphas_cumprod()
    np.testing.assert_array_equal(a, golden["alphas_cumprod"])   # bit-equal to diffusers' DDPMScheduler
    s = discrete.sigmas_from_alphas_cumprod(a)
    np.testing.assert_allclose(s[[0, 999]], np.sqrt((1 - a[[0, 999]].astype(np.float64)) / a[[0, 999]]), rtol=1e-6)
    assert s[0] == pytest.approx(0.0100005, rel=1e-4) and s[-1] == pytest.approx(157.4, rel=1e-3)


class _StubEps(nn.Module):
    """An ε-network whose output is known by hand: channels 0-3 = t + (mask sum) / 100 + text[:, 0, 0],
    channels 4-7 = 1e6 (a stand-in for the variance channels, which must be dropped)."""

    @nn.compact
    def __call__(self, x, text, t, mask):
        eps = (t.astype(x.dtype) + mask.sum(1) / 100 + text[:, 0, 0])[:, None, None, None] + 0 * x
        return jnp.concatenate([eps, jnp.full_like(x, 1e6)], axis=1)


def test_discrete_denoiser_by_hand(golden):
    a = golden["alphas_cumprod"].astype(np.float64)
    sig = np.sqrt((1 - a) / a)
    # σ between levels 9 and 10, just below level 500, and far past the last level
    sigma = np.array([0.49 * sig[9] + 0.51 * sig[10], sig[500] * (1 - 1e-4), 1e4], np.float32)
    t_want = np.array([10, 500, 999])
    t, s = discrete.round_sigma(sigma, discrete.sigmas_from_alphas_cumprod(golden["alphas_cumprod"]))
    np.testing.assert_array_equal(np.asarray(t), t_want)
    np.testing.assert_allclose(np.asarray(s), sig[t_want], rtol=1e-6)

    denoise = discrete.eps_denoiser(_StubEps())
    x = np.random.default_rng(0).standard_normal((3, 4, 2, 2)).astype(np.float32)
    text = np.zeros((3, 2, 5), np.float32)
    text[:, 0, 0] = [0.25, 0.5, 0.75]
    mask = np.array([[1, 1], [1, 0], [0, 0]], np.float32)
    d = denoise({}, x, sigma, TextCondition(text, mask))
    eps = t_want + mask.sum(1) / 100 + text[:, 0, 0]
    want = x - sig[t_want][:, None, None, None] * eps[:, None, None, None]    # x0 = x − σ_t ε
    np.testing.assert_allclose(np.asarray(d), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert d.shape == x.shape and d.dtype == jnp.float32


def test_discrete_denoiser_scales_input(transformer, golden):
    """D = x − σ_t F(x / √(1 + σ_t²), t)[:, :4] with the real network, a scalar σ broadcast to the batch."""
    module, params = transformer
    teacher = discrete.pixart_teacher(module, params)
    assert teacher.data_shape == (4, 8, 8) and teacher.label_dim == 0 and teacher.module is module
    sigma = 2.5
    t = int(np.argmin(np.abs(np.sqrt((1 - golden["alphas_cumprod"]) / golden["alphas_cumprod"]) - sigma)))
    s = float(np.sqrt((1 - golden["alphas_cumprod"][t].astype(np.float64)) / golden["alphas_cumprod"][t]))
    x = golden["latents"]
    eps = _apply(module, params, x / np.sqrt(1 + s * s), golden["text"], np.array([t, t]), golden["text_mask"])[:, :4]
    d = jax.jit(teacher.denoise)(params, x, sigma, TextCondition(golden["text"], golden["text_mask"]))
    want = x - s * np.asarray(eps)
    assert rel_err(d, want) < 1e-6


def test_guidance(transformer, golden):
    module, params = transformer
    cond = TextCondition(golden["text"], golden["text_mask"])
    null = TextCondition(np.full((1, 6, 24), 0.1, np.float32), np.array([[1, 0, 0, 0, 0, 0]], np.float32))
    x, sigma = golden["latents"], np.array([0.3, 12.0], np.float32)
    d_cond = jax.jit(discrete.eps_denoiser(module))(params, x, sigma, cond)
    d_null = jax.jit(discrete.eps_denoiser(module, null_condition=null))(params, x, sigma, None)
    assert rel_err(d_cond, np.asarray(d_null)) > 1e-3   # the text matters
    guided = jax.jit(lambda p, x, s, c, w: discrete.eps_denoiser(module, null_condition=null, guidance_scale=w)(
        p, x, s, c))   # w traced: one compilation for every scale
    for w in (1.0, 0.0, 4.5):
        d = guided(params, x, sigma, cond, w)
        want = np.asarray(d_null, np.float64) + w * (np.asarray(d_cond, np.float64) - np.asarray(d_null, np.float64))
        assert rel_err(d, want) < 2e-6, w
    with pytest.raises(ValueError, match="null_condition"):
        discrete.eps_denoiser(module, guidance_scale=2.0)
    with pytest.raises(ValueError, match="token count"):
        short = TextCondition(null.embeddings[:, :3], null.mask[:, :3])
        discrete.eps_denoiser(module, null_condition=short, guidance_scale=2.0)(params, x, sigma, cond)
