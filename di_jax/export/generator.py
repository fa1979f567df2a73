"""`export_generator(run, out_path, which="ema")`: a run's distilled generator as a PyTorch-format file."""

import json
from typing import Any, NamedTuple, Tuple

import jax
import numpy as np

from di_jax.convert.safetensors_file import SAFETENSORS_CONFIG_KEY as CONFIG_KEY  # "edm_config", as convert reads
from di_jax.export import edm, formats, mlp
from di_jax.export.errors import ExportError
from di_jax.nets.families import generator_kind, stylegan2_snapshot_path

FORMAT_TAG = "di_jax.generator/1"    # metadata 'format': bumped when the layout below changes
WHICH = ("ema", "raw")


class Exported(NamedTuple):
    path: str
    format: str          # "safetensors" | "pt"
    num_tensors: int     # entries written (EDM: parameters and constant buffers)
    num_params: int      # elements of the generator's parameter tree
    sha256: str          # of the written file
    metadata: dict       # the .safetensors header metadata (a .pt holds the state_dict only)


def generator_tensors(run, which: str = "ema") -> Tuple[dict, dict, Any]:
    """(tensors, metadata, params) of a run's generator: the ordered tensors to write, their string metadata.

    Args:
      run: a `di_jax.train.run_dir.Run`.
      which: "ema" (the EMA weights, what pictures and FID use) or "raw" (the last optimiser iterate).
    """
    if which not in WHICH:
        raise ExportError(f"which must be one of {WHICH}; got {which!r}")
    params = jax.device_get(run.ema_params if which == "ema" else run.gen_params)
    kind = run.config.networks.kind
    meta = {"format": FORMAT_TAG, "method": str(run.config.method), "step": str(int(run.step)), "params": which}
    if generator_kind(run.config.networks) == "stylegan2":
        tensors, gan_meta = stylegan2_tensors(run, params)
        meta.update(gan_meta)
    elif kind == "edm":
        config = edm.network_config(run.teacher.module)
        tensors = edm.state_dict(params, config)
        sigma_init = float(run.config.networks.sigma_init)
        meta.update(kind="edm", precond=config["precond"], sigma_init=repr(sigma_init),
                    generator="x0 = net(sigma_init * z, sigma_init, class_labels), z ~ N(0, I) [N, C, H, W]")
        meta[CONFIG_KEY] = json.dumps(config, sort_keys=True)
    elif kind == "mlp":
        tensors = mlp.tensors(params)
        meta.update(mlp.metadata(run.config.networks, run.nets.data_shape[0]),
                    generator="x0 = mlp(z), z ~ N(0, I) [N, dim]")
    else:
        raise ExportError(f"{run.workdir}: no exporter for config.networks.kind {kind!r} (known: edm, mlp)")
    return tensors, meta, params


def stylegan2_tensors(run, params) -> Tuple[dict, dict]:
    """(official state_dict, metadata) of a refined StyleGAN2-ADA generator: the run's parameters with the
    buffers of the snapshot it started from, and the Generator kwargs under the key `load_generator` reads."""
    from di_jax.convert.stylegan2_pickle import (
        GENERATOR_KWARGS_KEY,
        generator_kwargs,
        load_generator,
        variables_to_state_dict,
    )

    gen_cfg = run.config.networks.generator
    module, variables = load_generator(stylegan2_snapshot_path(gen_cfg))
    tensors = variables_to_state_dict({"params": params, "buffers": variables["buffers"]})
    meta = {"kind": "stylegan2", GENERATOR_KWARGS_KEY: json.dumps(generator_kwargs(module), sort_keys=True),
            "truncation_psi": repr(float(gen_cfg.get("truncation_psi", 1.0))),
            "noise_mode": str(gen_cfg.get("noise_mode", "const")),
            "generator": "x0 = G(z, c, truncation_psi, noise_mode), z ~ N(0, I) [N, z_dim], c one-hot [N, c_dim]"}
    return tensors, meta


def export_generator(run, out_path: str, which: str = "ema") -> Exported:
    """Write a run's generator to `out_path`; the extension picks the format.

    .safetensors: the weights and, in the header metadata, everything needed to rebuild the generator:
      format (FORMAT_TAG), kind, method, step, params (ema / raw) and
      - EDM generators (config.networks.kind "edm"): the official state_dict (`model.enc.8x8_conv.weight`, ...;
        loads into the official `EDMPrecond` etc. with strict=True), `precond` (class name), `edm_config`
        (JSON: `precond` plus the official class's init kwargs; also what `di-jax convert` reads) and
        `sigma_init`: x0 = net(sigma_init * z, sigma_init, class_labels).
      - StyleGAN2-ADA generators (config.networks.generator.kind "stylegan2"): the official `Generator`
        state_dict (parameters and the snapshot's buffers) with its kwargs under 'stylegan2_generator_kwargs',
        what `di_jax.convert.stylegan2_pickle.load_generator` reads back.
      - MLP generators ("mlp"): the flat Flax tree under '/'-joined names (`mlp/dense0/kernel`, Flax
        layouts, see `di_jax.export.mlp`) with hidden, depth, dim and activation.
    .pt: the official EDM state_dict saved with `torch.save` (EDM generators only; needs torch); it holds no
      metadata: `Exported.metadata` (and `di-jax export`'s output) give the config and sigma_init.

    Args:
      run: a `di_jax.train.run_dir.Run` (`load_run(workdir, step)`).
      out_path: the file to write (replaced if it exists; written under a temporary name, then renamed).
      which: "ema" or "raw".
    Raises: ExportError (one line) for a bad path or extension, .pt without torch or of an MLP, or a
      generator that does not fit its network.
    """
    fmt = formats.output_format(out_path)
    tensors, meta, params = generator_tensors(run, which)
    if fmt == "pt" and meta["kind"] != "edm":
        raise ExportError(f"{out_path}: .pt export writes the official EDM state_dict; this run's generator "
                          f"is an {meta['kind'].upper()} (config.networks.kind {meta['kind']!r}): export it "
                          f"to .safetensors")
    formats.write(out_path, tensors, meta)
    num_params = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))
    return Exported(str(out_path), fmt, len(tensors), num_params, formats.sha256(out_path), meta)
