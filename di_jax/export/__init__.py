"""A distilled generator of a run directory as PyTorch-format weights: `di-jax export RUN_DIR --out FILE`.

    run = load_run("runs/c10c_di")                               # di_jax.train.run_dir
    export_generator(run, "gen.safetensors")                     # EMA weights + config in the metadata
    export_generator(run, "gen.pt", which="raw")                 # a torch.save state_dict (EDM only)

An EDM-copy generator is written under the official EDM state_dict names, so PyTorch users load it
into the official network (`training.networks.VPPrecond(**kwargs)`) and generate with
x0 = net(sigma_init * z, sigma_init, class_labels):

    with safe_open("gen.safetensors", "np") as f: meta = f.metadata()
    kwargs = json.loads(meta["edm_config"]); net = getattr(networks, kwargs.pop("precond"))(**kwargs)
    net.load_state_dict(safetensors.torch.load_file("gen.safetensors"), strict=True)

The .safetensors file is also an EDM checkpoint to `di-jax convert` / `load_teacher`. torch is
needed only to write .pt.
"""

from di_jax.export.errors import ExportError
from di_jax.export.formats import FORMATS
from di_jax.export.generator import FORMAT_TAG, WHICH, Exported, export_generator, generator_tensors

__all__ = ["ExportError", "Exported", "export_generator", "generator_tensors", "FORMATS", "FORMAT_TAG", "WHICH"]
