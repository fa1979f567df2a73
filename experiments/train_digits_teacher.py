"""Trains the embedded teacher of the main job: a small class-conditional EDM SongUNet on sklearn digits.

    python experiments/train_digits_teacher.py [--steps 8000] [--out di_jax/assets/digits_teacher.safetensors]

EDM training (ln sigma ~ N(-1.2, 1.2^2), lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2,
EDM eq. 2 / Table 1) with the project's own `losses.dsm_loss`, Adam with warm-up and cosine decay,
EDM's EMA. The EMA weights are written as a `.safetensors` file with the official EDM state_dict
key names and the network config in its metadata (`di_jax.convert.save_safetensors`), so the main
job loads the teacher through the converter, like a PyTorch checkpoint. At the end it prints the
digit-classifier FD of Heun-sampled digits (35 NFE) against the real digits.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from di_jax import datasets, diffusion, losses
from di_jax.teachers import digits as digits_teacher


def train(steps: int, batch: int, lr: float, ema_halflife_kimg: float, seed: int, log_every: int = 500):
    """Returns (module, EMA params)."""
    from di_jax.nets import build_network

    images, labels = datasets.load_digits()
    net = build_network(digits_teacher.CONFIG)
    params = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, 1, 8, 8)), jnp.ones((1,)),
                      class_labels=jnp.zeros((1, 10)))["params"]
    print(f"teacher: {sum(p.size for p in jax.tree_util.tree_leaves(params)):,} params, "
          f"{len(images)} training digits", flush=True)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(500, steps // 10), steps, lr * 0.05)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    opt, ema = tx.init(params), params
    data_x, data_y = jnp.asarray(images), jax.nn.one_hot(jnp.asarray(labels), 10)

    @jax.jit
    def step(params, opt, ema, i):
        k_idx, k_sig, k_noise, k_drop = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed + 1), i), 4)
        idx = jax.random.randint(k_idx, (batch,), 0, data_x.shape[0])
        x0, y = data_x[idx], data_y[idx]
        sigma = diffusion.sample_sigma_lognormal(k_sig, (batch,))
        noise = jax.random.normal(k_noise, x0.shape)

        def loss_fn(p):
            den = lambda x, s, l: net.apply({"params": p}, x, s, class_labels=l, train=True,
                                            rngs={"dropout": k_drop})
            return jnp.mean(losses.dsm_loss(den, x0, sigma, noise, y))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
        # EDM's EMA: half-life in images, ramped up to 5% of the images seen so far
        half_life = jnp.minimum(ema_halflife_kimg * 1000.0, (i + 1) * batch * 0.05)
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


def heun_quality(net, params, num: int = 2000, num_steps: int = 18, seed: int = 123) -> dict:
    """Digit-classifier FD / class coverage / label accuracy of Heun samples (2 num_steps - 1 NFE)."""
    from di_jax.eval import digits
    from di_jax.sampling import sample_network

    images, _ = datasets.load_digits()
    clf = digits.load_params()
    ref = digits.feature_stats(digits.features_and_predictions(clf, images)[0])
    labels = np.arange(num) % 10
    latents = jax.random.normal(jax.random.PRNGKey(seed), (num, 1, 8, 8))
    sample = jax.jit(lambda p, z, y: sample_network(net, p, z, class_labels=y, num_steps=num_steps))
    x = np.asarray(sample(params, latents, jax.nn.one_hot(labels, 10)))
    return digits.evaluate_images(clf, x, ref, labels)


def main():
    from di_jax.convert import load_teacher, save_safetensors

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ema_halflife_kimg", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=digits_teacher.ASSET)
    args = parser.parse_args()

    net, ema = train(args.steps, args.batch, args.lr, args.ema_halflife_kimg, args.seed)
    save_safetensors(args.out, ema, digits_teacher.CONFIG)
    module, params = load_teacher(args.out)    # round trip through the converter, as the main job loads it
    print(f"wrote {args.out}", flush=True)
    print("teacher, Heun 35 NFE:", json.dumps(heun_quality(module, params)), flush=True)


if __name__ == "__main__":
    main()
