"""The quality report of an image distillation run on the embedded digits teacher (report.md + metrics).

Four ways to draw digits are compared with the embedded digit classifier (`di_jax.eval.digits`):
real held-out digits, the teacher with EDM's Heun sampler, the teacher at 1 NFE (Tweedie's
denoiser from sigma_max, and at the generator's sigma_init — the generator before training; for a
pre-trained GAN generator the GAN itself before refinement) and the distilled one-step generator.
Each row gets the Fréchet distance (FD) of classifier features
to all 1,797 real digits, the classes covered, the label accuracy of class-conditional samples,
the network evaluations (NFE) and the sampling time per image (compiled, after warm-up).
"""

import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np
from etils import epath

from di_jax import datasets
from di_jax.eval import digits as digits_eval
from di_jax.eval.pictures import image_grid_png
from di_jax.sampling import sample_network


def _timed(fn: Callable, *args) -> tuple:
    """(output as numpy, seconds) of a jitted fn; compiled first so the time excludes compilation."""
    compiled = jax.jit(fn).lower(*args).compile()
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return np.asarray(out), time.perf_counter() - t0


def balanced_labels(num: int, label_dim: int) -> np.ndarray:
    return (np.arange(num) % label_dim).astype(np.int32)


def digits_report(nets, module, teacher_params, gen_params, workdir: str, num: int = 1000, heun_steps: int = 18,
                  seed: int = 2024, extra: Dict[str, Any] | None = None,
                  start: Optional[Tuple[str, str, Any]] = None,
                  final_name: str = "distilled generator (EMA), 1 NFE") -> Dict[str, Any]:
    """Evaluates the rows above, writes `report.md` and a Heun grid to `workdir`; returns flat metrics.

    Args:
      start: (row name, metrics key, parameters) of the generator before training; default the teacher
        copy at sigma_init (`teacher_1nfe_sigma_init`). A pre-trained GAN generator passes its own
        parameters (DI Table 3: the GAN before and after refinement).
      final_name: the name of the trained generator's row (metrics key `distilled`).
    Generator rows draw z ~ N(0, I) of `nets.latent_shape`; when it is the image shape (teacher
    copies) the teacher rows share those latents, otherwise they draw their own from the same seed.
    """
    clf = digits_eval.load_params()
    images, _ = datasets.load_digits()
    ref = digits_eval.feature_stats(digits_eval.features_and_predictions(clf, images)[0])
    label_dim = nets.label_dim
    y = balanced_labels(num, label_dim)
    y1h = jax.nn.one_hot(y, label_dim) if label_dim else None
    z = jax.random.normal(jax.random.PRNGKey(seed), (num,) + tuple(nets.data_shape))
    z_gen = z if tuple(nets.latent_shape) == tuple(nets.data_shape) else \
        jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), 1), (num,) + tuple(nets.latent_shape))
    sigma_max = float(min(80.0, module.sigma_range()[1]))

    rows: List[Dict[str, Any]] = []

    def add(name, key, x, seconds, nfe, labels):
        m = digits_eval.evaluate_images(clf, x, ref, labels)
        rows.append(dict(name=name, key=key, nfe=nfe, num=len(x), ms_per_image=1e3 * seconds / len(x), **m))
        return x

    # real digits: a random half against all digits' statistics is the FD floor at this sample size
    order = np.random.default_rng(seed).permutation(len(images))
    half = images[order[: len(images) // 2]]
    add("real digits (random half)", "real", half, 0.0, 0, None)

    heun = lambda p, zz, ll: sample_network(module, p, zz, class_labels=ll, num_steps=heun_steps)
    x_heun, t = _timed(heun, teacher_params, z, y1h)
    add(f"teacher, Heun {2 * heun_steps - 1} NFE", "teacher_heun", x_heun, t, 2 * heun_steps - 1, y)

    def tweedie(p, zz, ll):
        sigma = jax.numpy.full((zz.shape[0],), sigma_max, zz.dtype)
        return module.apply({"params": p}, sigma_max * zz, sigma, class_labels=ll)
    x, t = _timed(tweedie, teacher_params, z, y1h)
    add(f"teacher, 1 NFE (Tweedie from sigma_max={sigma_max:g})", "teacher_1nfe", x, t, 1, y)

    gen = lambda p, zz, ll: nets.generate(p, zz, ll, None)
    start_name, start_key, start_params = start or ("teacher, 1 NFE at sigma_init (generator at step 0)",
                                                    "teacher_1nfe_sigma_init", teacher_params)
    x, t = _timed(gen, start_params, z_gen, y1h)
    add(start_name, start_key, x, t, 1, y)
    x, t = _timed(gen, gen_params, z_gen, y1h)
    add(final_name, "distilled", x, t, 1, y)

    ncol = 10
    grid_idx = np.argsort(y, kind="stable").reshape(label_dim or 1, -1)[:, :ncol].reshape(-1) if label_dim \
        else np.arange(min(num, 100))
    image_grid_png(os.path.join(workdir, "teacher_heun.png"), x_heun[grid_idx].transpose(0, 2, 3, 1), nrow=ncol,
                   scale=4)

    metrics = {}
    for r in rows:
        for k in ("fd", "classes_covered", "label_accuracy", "ms_per_image", "nfe"):
            if k in r:
                metrics[f"{r['key']}/{k}"] = r[k]
    by_key = {r["key"]: r for r in rows}
    metrics["fd_ratio_distilled_to_heun"] = by_key["distilled"]["fd"] / by_key["teacher_heun"]["fd"]
    metrics.update(extra or {})
    _write_markdown(os.path.join(workdir, "report.md"), rows, metrics, extra or {})
    (epath.Path(workdir) / "report_rows.json").write_text(json.dumps(rows, indent=2, default=float))
    return metrics


def _write_markdown(path: str, rows, metrics, extra) -> None:
    lines = ["# Distillation report: embedded digits teacher", ""]
    if extra:
        lines += [", ".join(f"{k}: {v}" for k, v in extra.items()), ""]
    lines += ["| samples | NFE | FD ↓ | classes covered | label accuracy | ms / image | n |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        acc = f"{r['label_accuracy']:.3f}" if "label_accuracy" in r else "—"
        ms = f"{r['ms_per_image']:.3f}" if r["nfe"] else "—"
        lines.append(f"| {r['name']} | {r['nfe'] or '—'} | {r['fd']:.2f} | {r['classes_covered']}/10 | {acc} | "
                     f"{ms} | {r['num']} |")
    lines += ["", f"Trained generator FD / teacher Heun FD = {metrics['fd_ratio_distilled_to_heun']:.2f}.", "",
              "FD: Fréchet distance of the embedded digit classifier's penultimate features to those of all "
              "1,797 real digits (the digits analogue of FID). Label accuracy: fraction of class-conditional "
              "samples the classifier assigns to the requested class. A class is covered when it receives "
              "at least 1/40 of the predictions. Times are compiled sampling on this machine, per image.", "",
              "| teacher, Heun | generator at start | trained generator (end) |", "|---|---|---|",
              "| ![teacher](teacher_heun.png) | ![start](samples_start.png) | ![end](samples_end.png) |", ""]
    epath.Path(path).write_text("\n".join(lines))
