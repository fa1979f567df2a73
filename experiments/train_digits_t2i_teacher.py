"""Trains the embedded text-to-image teacher: a small PixArt-α transformer on the 8x8 digits, prompted in words.

    python experiments/train_digits_t2i_teacher.py [--steps 6000] [--skip-embed] [--eval-only]

1. Prompts: six templates per digit for training ("a handwritten seven", "the digit 7", ...) and two held-out
   ones (`di_jax.text.digits`), embedded by a tiny random T5 (`di_jax.text.tiny_t5`, seed 0, built in a
   temporary folder: no download) through `di-jax embed-prompts` -> di_jax/assets/digits_prompts/{train,heldout}.
2. Teacher: `PixArtTransformer2DModel` in pixel space (the 8x8 grey digits in [-1, 1] are the "latents":
   in_channels 1, no VAE), ε-prediction DDPM objective (Ho et al. 2020, L_simple: t ~ U{0..999},
   x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε, ‖ε − F(x_t, t, text)‖²) on PixArt-α's linear β schedule (1e-4 … 0.02), so the
   discrete teacher wrapper (`di_jax.teachers.discrete`) serves it exactly as it serves PixArt-XL-2. Half of each
   batch (--edm_share) draws t as the level nearest to EDM's training σ (ln σ ~ N(−1.2, 1.2²), Karras et al. 2022)
   instead of uniformly: uniform t spends 3/4 of the steps at σ > 1, where 8x8 digits have no structure left. Each
   training digit gets a random prompt of its class, replaced by the null prompt "" with probability 0.1
   (classifier-free guidance, Ho & Salimans 2022). Adam, warm-up + cosine decay, EDM's EMA.
3. The EMA weights are written as a diffusers folder (di_jax/assets/digits_t2i_teacher/transformer/
   {config.json, diffusion_pytorch_model.safetensors} + scheduler/scheduler_config.json), reloaded through
   `load_pixart_teacher`, and measured: EDM's Heun sampler over the discrete denoiser (σ rounded to the 1000
   levels), digit-classifier FD against all 1,797 digits and label accuracy, per prompt, for several
   guidance scales; held-out prompts too.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from di_jax import datasets
from di_jax.nets.pixart import PixArtTransformer2DModel
from di_jax.teachers import discrete
from di_jax.text import digits as digit_prompts
from di_jax.text.embeddings import PromptEmbeddings
from di_jax.text.table import null_condition, prompt_table, take_prompts

ARCH = dict(num_attention_heads=4, attention_head_dim=16, in_channels=1, out_channels=1, num_layers=4, patch_size=2,
            sample_size=8, caption_channels=32, cross_attention_dim=64)


def embed(out_root: str) -> None:
    """Tiny random T5 (seed ENCODER_SEED) -> `di-jax embed-prompts --labels` for the train and held-out prompts."""
    from di_jax.text import cli, tiny_t5

    texts = [p for _, p in digit_prompts.prompts(digit_prompts.TRAIN_TEMPLATES + digit_prompts.HELDOUT_TEMPLATES)]
    with tempfile.TemporaryDirectory() as tmp:
        encoder = tiny_t5.build_tiny_t5(os.path.join(tmp, "t5"), texts, seed=digit_prompts.ENCODER_SEED)
        for name, templates in (("train", digit_prompts.TRAIN_TEMPLATES), ("heldout", digit_prompts.HELDOUT_TEMPLATES)):
            out = os.path.join(out_root, name)
            if os.path.exists(out):
                raise SystemExit(f"{out} exists: remove it to re-embed (or pass --skip-embed)")
            txt = digit_prompts.write_prompts_file(os.path.join(tmp, f"{name}.txt"), templates)
            rc = cli.main(["di-jax embed-prompts", "--prompts", txt, "--encoder", encoder, "--out", out, "--labels",
                           "--max-length", str(digit_prompts.MAX_LENGTH), "--dtype", "float16"])
            if rc:
                raise SystemExit(rc)


def train(prompts_dir: str, steps: int, batch: int, lr: float, ema_halflife_kimg: float, drop_prob: float,
          seed: int, arch: dict, edm_share: float = 0.0, log_every: int = 500):
    """Returns (module, EMA params)."""
    images, labels = datasets.load_digits()
    table = prompt_table(PromptEmbeddings(prompts_dir))
    by_class = np.stack([np.nonzero(np.asarray(table.label) == d)[0] for d in range(10)])   # [10, templates]
    net = PixArtTransformer2DModel(**arch)
    root = jax.random.PRNGKey(seed)
    params = net.init(jax.random.fold_in(root, 0), jnp.zeros((1, 1, 8, 8)), table.embeddings[:1], jnp.zeros((1,)),
                      table.mask[:1])["params"]
    print(f"teacher: {sum(p.size for p in jax.tree_util.tree_leaves(params)):,} params, {len(images)} digits, "
          f"{len(table.label)} prompts ({by_class.shape[1]} per digit)", flush=True)
    alphas = jnp.asarray(discrete.linear_alphas_cumprod())
    levels = discrete.sigmas_from_alphas_cumprod(discrete.linear_alphas_cumprod())
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(500, steps // 10), steps, lr * 0.05)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    opt, ema = tx.init(params), params
    data_x, data_y, rows_of = jnp.asarray(images), jnp.asarray(labels), jnp.asarray(by_class)

    @jax.jit
    def step(params, opt, ema, i):
        k = jax.random.fold_in(jax.random.fold_in(root, 1), i)
        idx = jax.random.randint(jax.random.fold_in(k, 0), (batch,), 0, data_x.shape[0])
        x0, y = data_x[idx], data_y[idx]
        which = jax.random.randint(jax.random.fold_in(k, 1), (batch,), 0, rows_of.shape[1])
        cond = take_prompts(table, rows_of[y, which])
        drop = jax.random.bernoulli(jax.random.fold_in(k, 2), drop_prob, (batch,))
        null = null_condition(table, batch)
        text = jnp.where(drop[:, None, None], null.embeddings, cond.embeddings)
        mask = jnp.where(drop[:, None], null.mask, cond.mask)
        t = jax.random.randint(jax.random.fold_in(k, 3), (batch,), 0, alphas.shape[0])
        if edm_share > 0:     # part of the batch at EDM's training σ (ln σ ~ N(-1.2, 1.2²)), rounded to a level
            ln_sigma = -1.2 + 1.2 * jax.random.normal(jax.random.fold_in(k, 5), (batch,))
            t_edm, _ = discrete.round_sigma(jnp.exp(ln_sigma), levels)
            t = jnp.where(jax.random.bernoulli(jax.random.fold_in(k, 6), edm_share, (batch,)), t_edm, t)
        eps = jax.random.normal(jax.random.fold_in(k, 4), x0.shape)
        a = alphas[t][:, None, None, None]
        x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * eps

        def loss_fn(p):
            return jnp.mean(jnp.square(net.apply({"params": p}, x_t, text, t, mask) - eps))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
        half_life = jnp.minimum(ema_halflife_kimg * 1000.0, (i + 1) * batch * 0.05)   # EDM's EMA with ramp-up
        beta = 0.5 ** (batch / jnp.maximum(half_life, 1e-8))
        ema = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, ema, params)
        return params, opt, ema, loss

    t0, running = time.time(), []
    for i in range(steps):
        params, opt, ema, loss = step(params, opt, ema, i)
        running.append(loss)
        if (i + 1) % log_every == 0 or i + 1 == steps:
            print(f"step {i + 1}/{steps}: loss {float(jnp.mean(jnp.stack(running))):.4f} "
                  f"({(i + 1) / (time.time() - t0):.1f} steps/s)", flush=True)
            running = []
    print(f"trained in {time.time() - t0:.0f} s", flush=True)
    return net, ema


def sample_heun(teacher, params, cond, z, num_steps: int = 18, sigma_max: float = 80.0):
    """EDM Heun (2 num_steps − 1 NFE) over the discrete teacher, σ rounded to the trained levels
    (`discrete.heun_sample`), from σ_max 80 to the smallest level (0.01)."""
    return discrete.heun_sample(teacher, params, z, cond, num_steps, sigma_max)


def evaluate(teacher_dir: str, prompt_sets: dict, per_prompt: int, guidance: list, num_steps: int,
             seed: int = 123) -> dict:
    """FD / label accuracy (overall, per prompt) of Heun samples for each guidance scale and prompt set."""
    from di_jax.eval import digits

    images, _ = datasets.load_digits()
    clf = digits.load_params()
    ref = digits.feature_stats(digits.features_and_predictions(clf, images)[0])
    results = {}
    for name, path in prompt_sets.items():
        ds = PromptEmbeddings(path)
        rows = ds.load_all()
        null = discrete.load_null_condition(path)
        n = len(ds) * per_prompt
        which = np.repeat(np.arange(len(ds)), per_prompt)
        cond = discrete.TextCondition(jnp.asarray(rows.embeddings[which]), jnp.asarray(rows.mask[which]))
        z = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), 0), (n, 1, 8, 8))
        for w in guidance:
            teacher = discrete.load_pixart_teacher(teacher_dir, null, None if w == 1.0 else w)
            run = jax.jit(lambda p, c, zz, t=teacher: sample_heun(t, p, c, zz, num_steps))
            jax.block_until_ready(run(teacher.params, jax.tree.map(lambda a: a[:8], cond), z[:8]))   # compile
            t0 = time.perf_counter()
            x = np.asarray(jax.block_until_ready(run(teacher.params, cond, z)))
            seconds = time.perf_counter() - t0
            m = digits.evaluate_images(clf, x, ref, rows.label[which])
            _, pred = digits.features_and_predictions(clf, x)
            acc = (pred == rows.label[which]).reshape(len(ds), per_prompt).mean(1)
            key = f"{name}/w{w:g}"
            results[key] = dict(m, nfe=2 * num_steps - 1, calls_per_nfe=1 if w == 1.0 else 2, num=n,
                                ms_per_image=1e3 * seconds / n, min_prompt_accuracy=float(acc.min()),
                                per_prompt={p: float(a) for p, a in zip(rows.prompt, acc)})
            worst = np.argsort(acc)[:3]
            print(f"{key}: FD {m['fd']:.2f}, label accuracy {m['label_accuracy']:.3f} (worst prompts: "
                  + ", ".join(f"{rows.prompt[i]!r} {acc[i]:.2f}" for i in worst)
                  + f"), classes {m['classes_covered']}/10, {1e3 * seconds / n:.2f} ms/image", flush=True)
            if name == "train":      # row d: 10 samples of the first template's prompt for digit d
                from di_jax.eval.pictures import image_grid_png
                grid = np.concatenate([x[which == i][:10] for i in range(10)])
                image_grid_png(os.path.join(os.path.dirname(__file__), "results", f"digits_t2i_teacher_w{w:g}.png"),
                               grid.transpose(0, 2, 3, 1), nrow=10, scale=4)
    return results


def main():
    from di_jax.convert.diffusers_folder import save_diffusers_model, write_scheduler_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema_halflife_kimg", type=float, default=20.0)
    parser.add_argument("--drop_prob", type=float, default=0.1)
    parser.add_argument("--edm_share", type=float, default=0.5,
                        help="fraction of each batch whose t comes from EDM's σ distribution instead of U{0..999}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", default="{}", help="JSON overrides of ARCH (PixArtTransformer2DModel fields)")
    parser.add_argument("--prompts", default=digit_prompts.PROMPTS)
    parser.add_argument("--out", default=digit_prompts.TEACHER)
    parser.add_argument("--skip-embed", action="store_true", help="reuse the prompt embeddings in --prompts")
    parser.add_argument("--eval-only", action="store_true", help="measure the teacher in --out, do not train")
    parser.add_argument("--per_prompt", type=int, default=40, help="samples per prompt in the evaluation")
    parser.add_argument("--guidance", default="1,2,3", help="guidance scales to evaluate")
    parser.add_argument("--heun_steps", type=int, default=18)
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results",
                                                          "digits_t2i_teacher.json"))
    args = parser.parse_args()

    t_start = time.time()
    if not args.skip_embed and not args.eval_only:
        embed(args.prompts)
    train_dir, heldout_dir = (os.path.join(args.prompts, n) for n in ("train", "heldout"))
    if not args.eval_only:
        net, ema = train(train_dir, args.steps, args.batch, args.lr, args.ema_halflife_kimg, args.drop_prob,
                         args.seed, {**ARCH, **json.loads(args.arch)}, args.edm_share)
        save_diffusers_model(os.path.join(args.out, "transformer"), net, ema)
        write_scheduler_config(args.out)
        print(f"wrote {args.out}", flush=True)
    guidance = [float(w) for w in args.guidance.split(",")]
    results = evaluate(args.out, {"train": train_dir, "heldout": heldout_dir}, args.per_prompt, guidance,
                       args.heun_steps)
    results["arch"] = {**ARCH, **json.loads(args.arch)}
    results["command"] = " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])
    results["seconds"] = round(time.time() - t_start, 1)
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.results} ({results['seconds']} s in all)", flush=True)


if __name__ == "__main__":
    main()
