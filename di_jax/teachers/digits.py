"""The embedded image teacher of the main job: a small class-conditional EDM SongUNet on 8x8 digits.

It ships as `di_jax/assets/digits_teacher.safetensors` — official EDM state_dict key names, the
network config in the file's metadata — and loads through the same converter path as any PyTorch
checkpoint (`di_jax.convert.load_teacher`). `experiments/train_digits_teacher.py` reproduces it.
"""

import os
from typing import Any, Tuple

ASSET = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "digits_teacher.safetensors")

# EDMPrecond(SongUNet) in the official constructor's argument names (DDPM++ style, reduced).
CONFIG = dict(precond="EDMPrecond", model_type="SongUNet", img_resolution=8, img_channels=1, label_dim=10,
              augment_dim=0, model_channels=16, channel_mult=[1, 2, 2], channel_mult_emb=4, num_blocks=1,
              attn_resolutions=[4], dropout=0.1, label_dropout=0.0, embedding_type="positional",
              channel_mult_noise=1, encoder_type="standard", decoder_type="standard", resample_filter=[1, 1],
              sigma_data=0.5)


def load(path: str = ASSET) -> Tuple[Any, Any]:
    """(module, params) of the embedded digits teacher."""
    from di_jax.convert import load_teacher  # pylint: disable=import-outside-toplevel

    if not os.path.exists(path):
        raise FileNotFoundError(f"digits teacher not found at {path}; run experiments/train_digits_teacher.py")
    return load_teacher(path)
