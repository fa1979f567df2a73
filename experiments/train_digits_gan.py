"""Trains the embedded GAN of the DI GAN-refinement job: a small StyleGAN2-ADA generator on the 8x8 digits.

    python experiments/train_digits_gan.py [--steps 3000] [--out di_jax/assets/digits_gan.safetensors]

The generator is the project's Flax StyleGAN2-ADA `Generator` (`di_jax.nets.stylegan2`) at the digits'
resolution, channels and classes (`di_jax.nets.digits_gan.KWARGS`); the discriminator is a small
conditional CNN written here in the StyleGAN2 'orig' manner (from-RGB 1x1 conv, 3x3 lrelu convs with gain
sqrt 2, 2x average-pool down-sampling, minibatch standard deviation, FC, and the StyleGAN2-ADA projection
discriminator output <D(x), embed(c)> / sqrt(cmap_dim)). Training follows StyleGAN2-ADA's loss
(`training/loss.py`, StyleGAN2Loss without path length and style mixing, as its 'cifar' preset):
non-saturating logistic loss, R1 penalty gamma/2 ||grad_x D(x)||^2 on real images with StyleGAN2's lazy
regularisation (every `--r1-interval` steps, weighted by the interval), Adam(0, 0.99), generator
noise_mode 'random', w_avg tracked, and the generator EMA of
StyleGAN2-ADA (`di_jax.train.state.stylegan2_ema_decay`: ema_kimg, ramp-up 0.05). Every `--eval-every`
steps and at the end it prints the embedded digit classifier's FD, class coverage and label accuracy of
the EMA generator (1,000 class-balanced samples, noise_mode 'const'). The EMA generator is written with
`di_jax.convert.stylegan2_pickle.save_generator` (official state_dict names, kwargs in the metadata) and
read back with `load_generator`, as the GAN-refinement job reads it.
"""

import argparse
import functools
import json
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from di_jax import datasets
from di_jax.nets import digits_gan
from di_jax.train.state import stylegan2_ema_decay

SQRT2 = math.sqrt(2.0)


def lrelu(x):
    """StyleGAN's lrelu with gain sqrt 2 (bias_act 'lrelu')."""
    return nn.leaky_relu(x, 0.2) * SQRT2


def minibatch_std(h, group: int = 4):
    """StyleGAN's minibatch standard deviation layer on NHWC features: one extra channel holding, for each
    group of `group` examples (members i, i + N/group, ...), the mean over features of their std."""
    n, height, width, c = h.shape
    g = min(group, n)
    y = h.reshape(g, n // g, height, width, c)
    y = jnp.sqrt(jnp.mean(jnp.square(y - y.mean(0)), axis=0) + 1e-8)     # [N/g, H, W, C]
    y = jnp.mean(y, axis=(1, 2, 3))                                       # [N/g]
    y = jnp.tile(y, g).reshape(n, 1, 1, 1)
    return jnp.concatenate([h, jnp.broadcast_to(y, (n, height, width, 1))], axis=-1)


class Discriminator(nn.Module):
    """Conditional discriminator of [N, 1, 8, 8] images in [-1, 1] and one-hot labels -> logits [N]."""
    width: int = 64
    cmap_dim: int = 64

    @nn.compact
    def __call__(self, x, c):
        h = jnp.transpose(x, (0, 2, 3, 1))
        h = lrelu(nn.Conv(self.width, (1, 1), name="fromrgb")(h))
        h = lrelu(nn.Conv(self.width, (3, 3), name="conv8_0")(h))
        h = lrelu(nn.Conv(self.width, (3, 3), name="conv8_1")(h))
        h = nn.avg_pool(h, (2, 2), (2, 2))                                   # 4x4
        h = minibatch_std(h)
        h = lrelu(nn.Conv(self.width, (3, 3), name="conv4")(h))
        h = lrelu(nn.Dense(self.width, name="fc")(h.reshape(h.shape[0], -1)))
        out = nn.Dense(self.cmap_dim, name="out")(h)
        cmap = nn.Dense(self.cmap_dim, name="embed")(c)
        return jnp.sum(out * cmap, axis=1) / math.sqrt(self.cmap_dim)


def train(steps: int, batch: int, lr: float, r1_gamma: float, ema_kimg: float, seed: int, eval_every: int,
          r1_interval: int = 4, log_every: int = 250):
    """Returns (generator module, G_ema variables, evaluation history)."""
    from di_jax.convert.stylegan2_pickle import build_generator, check_generator_kwargs

    images, labels = datasets.load_digits()
    G = build_generator(check_generator_kwargs(digits_gan.KWARGS))
    D = Discriminator()
    k_g, k_d = jax.random.split(jax.random.PRNGKey(seed))
    z0, c0 = jnp.zeros((2, G.z_dim)), jnp.zeros((2, G.c_dim))
    g_vars = G.init(k_g, z0, c0, noise_mode="const")
    d_params = D.init(k_d, jnp.zeros((2, 1, 8, 8)), c0)["params"]
    g_params, buffers = g_vars["params"], g_vars["buffers"]
    count = lambda t: sum(int(x.size) for x in jax.tree_util.tree_leaves(t))
    print(f"G: {count(g_params):,} params; D: {count(d_params):,} params; {len(images)} training digits",
          flush=True)
    tx = optax.adam(lr, b1=0.0, b2=0.99, eps=1e-8)
    g_opt, d_opt = tx.init(g_params), tx.init(d_params)
    ema = g_params
    data_x, data_c = jnp.asarray(images), jax.nn.one_hot(jnp.asarray(labels), 10)

    def fakes(gp, bufs, key, c, update_w_avg=False):
        z = jax.random.normal(jax.random.fold_in(key, 0), (batch, G.z_dim))
        out, mutated = G.apply({"params": gp, "buffers": bufs}, z, c, noise_mode="random",
                               update_w_avg=update_w_avg, rngs={"noise": jax.random.fold_in(key, 1)},
                               mutable=["buffers"])
        return out, mutated["buffers"]

    @functools.partial(jax.jit, static_argnums=7)
    def step(g_params, d_params, g_opt, d_opt, ema, buffers, i, reg: bool):
        key = jax.random.fold_in(jax.random.PRNGKey(seed + 1), i)
        k_real, k_gc, k_g, k_dc, k_d = (jax.random.fold_in(key, j) for j in range(5))
        real_idx = jax.random.randint(k_real, (batch,), 0, data_x.shape[0])
        x_real, c_real = data_x[real_idx], data_c[real_idx]
        c_gen = data_c[jax.random.randint(k_gc, (batch,), 0, data_x.shape[0])]   # labels as in the data

        # Gmain: non-saturating logistic loss softplus(-D(G(z)))
        def g_loss(gp):
            x, bufs = fakes(gp, buffers, k_g, c_gen, update_w_avg=True)
            return jnp.mean(jax.nn.softplus(-D.apply({"params": d_params}, x, c_gen))), bufs

        (lg, new_buffers), g_grads = jax.value_and_grad(g_loss, has_aux=True)(g_params)
        upd, g_opt = tx.update(g_grads, g_opt, g_params)
        g_params = optax.apply_updates(g_params, upd)

        # Dmain + Dr1: softplus(D(G(z))) + softplus(-D(x)) + gamma/2 |grad_x D(x)|^2
        c_fake = data_c[jax.random.randint(k_dc, (batch,), 0, data_x.shape[0])]
        x_fake = jax.lax.stop_gradient(fakes(g_params, new_buffers, k_d, c_fake)[0])

        def d_loss(dp):
            real_logits_fn = lambda xr: D.apply({"params": dp}, xr, c_real)
            real_logits, pull = jax.vjp(real_logits_fn, x_real)
            r1 = jnp.zeros(batch)
            if reg:                     # lazy R1: every r1_interval steps, weighted by the interval
                (r1_grads,) = pull(jnp.ones_like(real_logits))
                r1 = jnp.sum(jnp.square(r1_grads), axis=(1, 2, 3))
            fake_logits = D.apply({"params": dp}, x_fake, c_fake)
            loss = jax.nn.softplus(fake_logits) + jax.nn.softplus(-real_logits) + r1 * (r1_gamma / 2 * r1_interval)
            return jnp.mean(loss), (jnp.mean(r1), jnp.mean(real_logits), jnp.mean(fake_logits))

        (ld, (r1, real_l, fake_l)), d_grads = jax.value_and_grad(d_loss, has_aux=True)(d_params)
        upd, d_opt = tx.update(d_grads, d_opt, d_params)
        d_params = optax.apply_updates(d_params, upd)

        # G_ema (StyleGAN2-ADA's rule; cur_nimg = images before this step); its buffers are G's
        beta = stylegan2_ema_decay(i, batch, ema_kimg, 0.05)
        ema = jax.tree.map(lambda e, p: p + beta * (e - p), ema, g_params)     # torch: p.lerp(p_ema, beta)
        return g_params, d_params, g_opt, d_opt, ema, new_buffers, dict(g=lg, d=ld, r1=r1, real=real_l, fake=fake_l)

    evaluate = make_eval(G)
    history, t0, running = [], time.time(), []
    for i in range(steps):
        g_params, d_params, g_opt, d_opt, ema, buffers, m = step(g_params, d_params, g_opt, d_opt, ema, buffers,
                                                                 jnp.int32(i), i % r1_interval == 0)
        running.append(m)
        if (i + 1) % log_every == 0 or i + 1 == steps:
            mean = {k: float(np.mean([float(r[k]) for r in running])) for k in running[0]}
            mean["r1"] *= r1_interval           # the mean R1 of the regularised steps
            running = []
            print(f"step {i + 1}/{steps}: G {mean['g']:.3f} D {mean['d']:.3f} R1 {mean['r1']:.3f} "
                  f"D(real) {mean['real']:+.2f} D(fake) {mean['fake']:+.2f} "
                  f"({(i + 1) / (time.time() - t0):.1f} steps/s)", flush=True)
        if eval_every and ((i + 1) % eval_every == 0 or i + 1 == steps):
            q = evaluate({"params": ema, "buffers": buffers})
            history.append(dict(step=i + 1, seconds=time.time() - t0, **q))
            print(f"  step {i + 1}: G_ema FD {q['fd']:.2f}, classes {q['classes_covered']}/10, "
                  f"label accuracy {q['label_accuracy']:.3f}", flush=True)
    print(f"trained in {time.time() - t0:.0f} s", flush=True)
    return G, {"params": ema, "buffers": buffers}, history


def make_eval(G, num: int = 1000, seed: int = 2024):
    """evaluate(variables) -> classifier FD / coverage / label accuracy of `num` class-balanced samples."""
    from di_jax.eval import digits

    images, _ = datasets.load_digits()
    clf = digits.load_params()
    ref = digits.feature_stats(digits.features_and_predictions(clf, images)[0])
    labels = np.arange(num) % 10
    z = jax.random.normal(jax.random.PRNGKey(seed), (num, G.z_dim))
    sample = jax.jit(lambda v, zz, cc: G.apply(v, zz, cc, noise_mode="const"))

    def evaluate(variables):
        x = np.asarray(sample(variables, z, jax.nn.one_hot(labels, 10)))
        out = digits.evaluate_images(clf, x, ref, labels)
        out.update(x_min=float(x.min()), x_max=float(x.max()), x_std=float(x.std()))
        return out
    return evaluate


def main():
    from di_jax.convert.stylegan2_pickle import load_generator, save_generator

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--r1-gamma", type=float, default=0.05)
    parser.add_argument("--r1-interval", type=int, default=4)
    parser.add_argument("--ema-kimg", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--out", default=digits_gan.ASSET)
    parser.add_argument("--history", default="", help="write the evaluation history as JSON here")
    args = parser.parse_args()

    G, variables, history = train(args.steps, args.batch, args.lr, args.r1_gamma, args.ema_kimg, args.seed,
                                  args.eval_every, args.r1_interval)
    save_generator(args.out, digits_gan.KWARGS, variables)
    module, loaded = load_generator(args.out)      # round trip through the loader, as the refinement job reads it
    final = make_eval(module)(loaded)
    print(f"wrote {args.out}", flush=True)
    print("G_ema (loaded back):", json.dumps(final), flush=True)
    if args.history:
        with open(args.history, "w") as f:
            json.dump(dict(args=vars(args), history=history, final=final), f, indent=2)


if __name__ == "__main__":
    main()
