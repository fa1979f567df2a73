"""Trains the embedded digit classifier (the evaluator of the digits main job) and writes its weights.

    python experiments/train_digits_classifier.py [--out di_jax/assets/digits_classifier.msgpack]

Trained on the 80% train split with light noise/shift augmentation (so that it reads imperfect
generated digits too); prints held-out accuracy. About a minute on 2 CPU cores.
"""

import argparse
import time

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from di_jax import datasets
from di_jax.eval import digits


def augment(rng, x):
    k1, k2, k3 = jax.random.split(rng, 3)
    shift = jax.random.randint(k1, (2,), -1, 2)
    x = jnp.roll(x, tuple(shift), axis=(2, 3))
    x = x + 0.15 * jax.random.normal(k2, x.shape) * jax.random.uniform(k3, (x.shape[0], 1, 1, 1))
    return jnp.clip(x, -1, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=digits.ASSET)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x_tr, y_tr = datasets.load_digits(split="train")
    x_te, y_te = datasets.load_digits(split="test")
    params = digits.init_params(jax.random.PRNGKey(args.seed))
    tx = optax.adamw(2e-3, weight_decay=1e-4)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, rng):
        k_idx, k_aug = jax.random.split(rng)
        idx = jax.random.randint(k_idx, (128,), 0, len(x_tr))
        x = augment(k_aug, jnp.asarray(x_tr)[idx])

        def loss_fn(p):
            _, logits = digits.DigitClassifier().apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y_tr)[idx]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    t0 = time.time()
    for i in range(args.steps):
        params, opt, loss = step(params, opt, jax.random.PRNGKey(10_000 + i))
        if (i + 1) % 500 == 0:
            _, pred = digits.features_and_predictions(params, x_te)
            print(f"step {i + 1}: loss {float(loss):.4f}  test accuracy {np.mean(pred == y_te):.4f}")
    _, pred = digits.features_and_predictions(params, x_te)
    print(f"held-out accuracy {np.mean(pred == y_te):.4f} ({len(y_te)} images), {time.time() - t0:.0f} s")
    with open(args.out, "wb") as f:
        f.write(flax.serialization.to_bytes(params))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
