"""diffusers folders through `di-jax convert` / `load_teacher`, the "pixart" teacher kind, the diffusers-folder
writer and scheduler config, the embedded digits text-to-image teacher, and the discrete wrapper's exactness on
Gaussian data."""

import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from di_jax.convert import CheckpointError, load_teacher
from di_jax.convert.diffusers_convert import load_diffusers
from di_jax.convert.diffusers_folder import (
    load_diffusers_model,
    read_scheduler_config,
    save_diffusers_model,
    write_scheduler_config,
)
from di_jax.nets.pixart import PixArtTransformer2DModel
from di_jax.teachers import build_teacher, discrete
from di_jax.teachers.discrete import TextCondition
from di_jax.text import digits as digit_prompts
from di_jax.text import write_prompt_embeddings

GOLDEN = pathlib.Path(__file__).parent / "data" / "pixart"


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN / "pixart_tiny.npz")


def assert_same_params(a, b):
    ta, tb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    assert ta == tb
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def one_line(fn, *words, error=CheckpointError):
    with pytest.raises(error) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


def pipeline_copy(tmp_path, schedule=True):
    folder = tmp_path / "pipe"
    shutil.copytree(GOLDEN / "pixart_tiny", folder)
    if schedule:
        write_scheduler_config(folder, 0.0001, 0.02, 1000)
    return folder


def test_convert_command_and_load_teacher(tmp_path, capsys):
    from di_jax import cli

    pipe = pipeline_copy(tmp_path)
    raw_module, raw_params = load_teacher(pipe)                  # a raw pipeline folder: its transformer
    t_module, t_params = load_diffusers_model(pipe / "transformer")
    assert isinstance(raw_module, PixArtTransformer2DModel) and raw_module == t_module
    assert_same_params(raw_params, t_params)

    out = tmp_path / "converted"
    assert cli.main(["convert", str(pipe), str(out)]) == 0
    line = capsys.readouterr().out
    assert "transformer/ PixArtTransformer2DModel: 2 layers x 32" in line and "vae/ AutoencoderKL" in line
    assert (out / "transformer" / "params").is_dir() and (out / "vae" / "config.json").is_file()
    module, params = load_teacher(out)
    assert module == t_module
    assert_same_params(params, t_params)
    v_module, v_params = load_diffusers(out, "vae")
    assert_same_params(v_params, load_diffusers_model(pipe / "vae")[1])
    assert read_scheduler_config(out) == dict(beta_start=0.0001, beta_end=0.02, num_steps=1000)

    assert cli.main(["convert", str(pipe), str(out)]) == 2               # never over an existing conversion
    assert "already holds a converted model" in capsys.readouterr().err
    assert cli.main(["convert", str(pipe), str(tmp_path / "x"), "--config", "{}"]) == 2
    assert "--config applies to EDM checkpoint files" in capsys.readouterr().err
    one_line(lambda: load_teacher(pipe, config={"img_resolution": 8}), "diffusers folders")

    cfg = json.loads((out / "transformer" / "config.json").read_text())   # params no longer match the config
    (out / "transformer" / "config.json").write_text(json.dumps(dict(cfg, num_layers=1)))
    one_line(lambda: load_teacher(out), "params do not match config.json")
    (out / "transformer" / "config.json").write_text(json.dumps(dict(cfg, caption_channels=20)))
    one_line(lambda: load_teacher(out), "params do not match config.json")


def test_single_model_folder(tmp_path):
    out = tmp_path / "t"
    from di_jax.convert.diffusers_convert import convert_diffusers

    parts = convert_diffusers(GOLDEN / "pixart_tiny" / "transformer", out)
    assert list(parts) == [""] and (out / "params").is_dir()
    assert_same_params(load_teacher(out)[1], load_teacher(GOLDEN / "pixart_tiny" / "transformer")[1])


def test_writer_round_trip_and_diffusers_reads_it(tmp_path, golden):
    module, params = load_diffusers_model(GOLDEN / "pixart_tiny" / "transformer")
    bumped = jax.tree_util.tree_map(lambda a: a + 0.01, params)
    save_diffusers_model(tmp_path / "m", module, bumped)
    again, again_params = load_diffusers_model(tmp_path / "m")
    assert again == module
    assert_same_params(again_params, bumped)
    vae, vae_params = load_diffusers_model(GOLDEN / "pixart_tiny" / "vae")
    save_diffusers_model(tmp_path / "v", vae, vae_params)
    assert load_diffusers_model(tmp_path / "v")[0] == vae
    with pytest.raises(CheckpointError, match="lacks tensor"):
        save_diffusers_model(tmp_path / "bad", module.clone(num_layers=3), bumped)

    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.PixArtTransformer2DModel.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        want = ref(torch.from_numpy(golden["latents"]), encoder_hidden_states=torch.from_numpy(golden["text"]),
                   timestep=torch.from_numpy(golden["timestep"]),
                   encoder_attention_mask=torch.from_numpy(golden["text_mask"])).sample.numpy()
    got = module.apply({"params": bumped}, golden["latents"], golden["text"], golden["timestep"], golden["text_mask"])
    assert np.max(np.abs(np.asarray(got) - want)) <= 1e-5 * np.max(np.abs(want))


def test_scheduler_config(tmp_path, golden):
    assert read_scheduler_config(GOLDEN / "pixart_tiny") is None
    write_scheduler_config(tmp_path, 0.0001, 0.02, 1000)
    kwargs = read_scheduler_config(tmp_path)
    np.testing.assert_array_equal(discrete.linear_alphas_cumprod(**kwargs), golden["alphas_cumprod"])
    path = tmp_path / "scheduler" / "scheduler_config.json"
    cfg = json.loads(path.read_text())
    for change, words in ((dict(beta_schedule="scaled_linear"), ("beta_schedule", "'linear'")),
                          (dict(prediction_type="v_prediction"), ("prediction_type", "'epsilon'")),
                          (dict(beta_start=0.5, beta_end=0.1), ("beta_start 0.5 must be below",))):
        path.write_text(json.dumps(dict(cfg, **change)))
        one_line(lambda: read_scheduler_config(tmp_path), *words)
    path.write_text(json.dumps(dict(cfg, solver_order=2, beta_end=0.012)))     # sampler keys are not read
    assert read_scheduler_config(tmp_path)["beta_end"] == 0.012


def pixart_config(path="", null_prompt="", guidance_scale=1.0):
    c = ml_collections.ConfigDict()
    c.teacher = ml_collections.ConfigDict(dict(kind="pixart", path=path, null_prompt=null_prompt,
                                               guidance_scale=guidance_scale))
    c.networks = ml_collections.ConfigDict(dict(dtype="float32"))
    return c


def test_pixart_teacher_kind(tmp_path, golden):
    pipe = pipeline_copy(tmp_path)
    rng = np.random.default_rng(0)
    null = (rng.standard_normal((1, 6, 24)).astype(np.float32), np.eye(1, 6, dtype=np.uint8))
    write_prompt_embeddings(tmp_path / "prompts", golden["text"], golden["text_mask"], ["a", "b"], null=null,
                            dtype="float32")
    cond = TextCondition(golden["text"], golden["text_mask"])
    x, sigma = golden["latents"], np.array([0.5, 20.0], np.float32)
    plain = build_teacher(pixart_config(str(pipe), str(tmp_path / "prompts")))
    assert plain.data_shape == (4, 8, 8) and plain.label_dim == 0
    d_cond = plain.denoise(plain.params, x, sigma, cond)
    d_null = plain.denoise(plain.params, x, sigma, None)                 # labels=None: the null prompt
    want_null = discrete.eps_denoiser(plain.module, null_condition=TextCondition(*null))(plain.params, x, sigma, None)
    np.testing.assert_allclose(np.asarray(d_null), np.asarray(want_null), rtol=1e-6, atol=1e-6)
    guided = build_teacher(pixart_config(str(pipe), str(tmp_path / "prompts"), guidance_scale=3.0))
    d = guided.denoise(guided.params, x, sigma, cond)
    want = np.asarray(d_null, np.float64) + 3.0 * (np.asarray(d_cond, np.float64) - np.asarray(d_null, np.float64))
    assert np.max(np.abs(np.asarray(d) - want)) <= 2e-6 * np.max(np.abs(want))
    one_line(lambda: build_teacher(pixart_config(str(pipe))), "config.teacher.null_prompt is empty", error=ValueError)
    one_line(lambda: build_teacher(pixart_config(str(pipe), digit_prompts.TRAIN_PROMPTS)), "32 wide",
             "text input 24", error=ValueError)


@pytest.mark.skipif(not (pathlib.Path(digit_prompts.TEACHER) / "transformer").is_dir(),
                    reason="the digits text-to-image teacher asset is not built")
def test_embedded_digits_t2i_teacher():
    teacher = build_teacher(pixart_config())        # path '' and null_prompt '': the embedded teacher and prompts
    assert teacher.data_shape == (1, 8, 8) and teacher.module.caption_channels == 32
    from di_jax.text import PromptEmbeddings
    rows = PromptEmbeddings(digit_prompts.TRAIN_PROMPTS).rows([7, 17])
    x = jnp.zeros((2, 1, 8, 8))
    d = teacher.denoise(teacher.params, x, 5.0, TextCondition(rows.embeddings, rows.mask))
    assert d.shape == (2, 1, 8, 8) and bool(jnp.all(jnp.isfinite(d)))
    assert rows.prompt.tolist() == ["a handwritten seven", "the digit 7"]
    assert float(jnp.max(jnp.abs(d[0] - d[1]))) > 1e-3                 # different prompts, different denoisers


# ---------------------------------------------------------------- exactness on Gaussian data

class ExactGaussianEps(nn.Module):
    """The exact ε-predictor of data x0 ~ N(0, s² I) under the DDPM forward process x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε:
    E[ε | x_t] = √(1 − ᾱ_t) x_t / (ᾱ_t s² + 1 − ᾱ_t), plus a channel of junk standing for PixArt's learned variance
    (which the wrapper must drop)."""
    alphas_cumprod: tuple
    s: float

    @nn.compact
    def __call__(self, x_t, text, t, mask):
        a = jnp.asarray(self.alphas_cumprod, x_t.dtype)[t][:, None, None, None]
        eps = jnp.sqrt(1 - a) * x_t / (a * self.s ** 2 + 1 - a)
        return jnp.concatenate([eps, jnp.full_like(eps, 1e3)], axis=1)


def test_denoiser_exact_when_eps_is_exact():
    """D(x; σ) = s² / (s² + σ_t²) x, the posterior mean E[x0 | x0 + σ_t n = x], at the rounded level σ_t.

    The wrapper keeps its levels σ_t in float32; the exact network is built on the ᾱ_t = 1 / (1 + σ_t²) of those
    very levels, so the identity holds to float64 rounding (x64 inside this test)."""
    with jax.enable_x64(True):
        levels = discrete.sigmas_from_alphas_cumprod(discrete.linear_alphas_cumprod()).astype(np.float64)
        s = 0.7
        net = ExactGaussianEps(tuple((1 / (1 + levels ** 2)).tolist()), s)
        denoise = discrete.eps_denoiser(net)
        rng = np.random.default_rng(0)
        # on a level, between levels (rounded), past the last, below the first, and EDM-style values
        sigma = np.array([levels[0], levels[100], 0.4 * levels[300] + 0.6 * levels[301], levels[999] * 2,
                          1e-4, 2.5, 80.0], np.float64)
        x = rng.standard_normal((len(sigma), 2, 4, 4)) * np.sqrt(s ** 2 + sigma[:, None, None, None] ** 2)
        text = TextCondition(np.zeros((len(sigma), 1, 3)), np.ones((len(sigma), 1)))
        d = np.asarray(denoise({}, jnp.asarray(x), jnp.asarray(sigma), text), np.float64)
        t = np.argmin(np.abs(sigma[:, None] - levels[None]), axis=1)
        assert t.tolist()[:4] == [0, 100, 301, 999]
        st = levels[t][:, None, None, None]
        want = s ** 2 / (s ** 2 + st ** 2) * x
        rel = np.max(np.abs(d - want).reshape(len(sigma), -1), axis=1) / np.max(np.abs(want).reshape(len(sigma), -1),
                                                                                axis=1)
        assert rel.max() <= 1e-10, rel
        # the rounding is real: off the levels, the posterior mean at the unrounded σ differs
        unrounded = s ** 2 / (s ** 2 + sigma[:, None, None, None] ** 2) * x
        off = np.max(np.abs(d - unrounded).reshape(len(sigma), -1), axis=1) / np.max(np.abs(unrounded).reshape(
            len(sigma), -1), axis=1)
        assert off[2] > 1e-3 and off[3] > 0.5 and off[1] <= 1e-10, off


def test_heun_over_the_exact_gaussian_teacher():
    """EDM Heun over the discrete wrapper of the exact ε-network: the same numbers as Heun over the exact posterior
    mean at the rounded levels (the sampler is linear in z here: x = c z, c from a float64 scalar recursion), and
    with enough steps the draws are N(0, s² I) (Heun-18 itself is 4 % wide on this narrow Gaussian)."""
    from di_jax.sampling import edm_sigma_steps
    from di_jax.teachers.base import Teacher

    levels = discrete.sigmas_from_alphas_cumprod(discrete.linear_alphas_cumprod())
    s = 0.7
    net = ExactGaussianEps(tuple((1 / (1 + levels.astype(np.float64) ** 2)).tolist()), s)
    teacher = Teacher(params={}, denoise=discrete.eps_denoiser(net), data_shape=(1, 2, 2), module=net)
    z = jax.random.normal(jax.random.PRNGKey(0), (4096, 1, 2, 2))
    text = TextCondition(jnp.zeros((1, 1, 3)), jnp.ones((1, 1)))
    round_sigma, (lo, hi) = discrete.level_rounder()
    assert (lo, hi) == (float(levels[0]), float(levels[-1]))
    for n in (18, 100):
        x = np.asarray(jax.jit(lambda z, n=n: discrete.heun_sample(teacher, {}, z, text, num_steps=n))(z))
        t = edm_sigma_steps(n, lo, 80.0, 7.0, round_sigma)
        assert t[0] == levels[np.argmin(np.abs(levels - 80.0))]
        c, post = t[0], lambda x, sig: s * s / (s * s + sig * sig) * x
        for i in range(n):                      # Heun (EDM Algorithm 1), Euler on the last step
            d = (c - post(c, t[i])) / t[i]
            euler = c + (t[i + 1] - t[i]) * d
            c = euler if i == n - 1 else c + (t[i + 1] - t[i]) * (0.5 * d + 0.5 * (euler - post(euler, t[i + 1]))
                                                                  / t[i + 1])
        np.testing.assert_allclose(x, c * np.asarray(z), rtol=2e-5, atol=2e-6)
    assert abs(x.std() / s - 1) < 0.015 and abs(x.mean()) < 0.02      # n = 100: c = 1.001 s
    query = np.array([0.0, 2.5, 1e9])
    want = levels[np.argmin(np.abs(query[:, None] - levels[None]), axis=1)]
    np.testing.assert_array_equal(round_sigma(query), want)
    np.testing.assert_array_equal(np.asarray(jax.jit(round_sigma)(jnp.asarray(query, jnp.float32))), want)
