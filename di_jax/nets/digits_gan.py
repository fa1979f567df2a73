"""The embedded GAN of DI's GAN-refinement job: a small StyleGAN2-ADA generator of the 8x8 digits.

It ships as `di_jax/assets/digits_gan.safetensors` — the official StyleGAN2-ADA `Generator`
state_dict names, its constructor kwargs in the file's metadata — and loads through
`di_jax.convert.stylegan2_pickle.load_generator`, like an official snapshot.
`experiments/train_digits_gan.py` reproduces it; `di_jax/configs/digits_di_gan.py` refines it with DI
against the embedded digits teacher (DI §4.2, Table 3 in miniature).
"""

import os
from typing import Any, Tuple

ASSET = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "digits_gan.safetensors")

# Official StyleGAN2-ADA Generator kwargs (the 'cifar' preset's layout, reduced): 2-layer mapping, 'skip'
# synthesis, conv_clamp 256, no float16 blocks; 8x8, 1 channel, 10 classes like the digits teacher.
KWARGS = dict(z_dim=32, c_dim=10, w_dim=64, img_resolution=8, img_channels=1,
              mapping_kwargs=dict(num_layers=2),
              synthesis_kwargs=dict(channel_base=512, channel_max=64, num_fp16_res=0, conv_clamp=256,
                                    architecture="skip"))


def load(path: str = ASSET) -> Tuple[Any, dict]:
    """(module, variables) of the embedded digits GAN generator (its G_ema)."""
    from di_jax.convert.stylegan2_pickle import load_generator  # pylint: disable=import-outside-toplevel

    if not os.path.exists(path):
        raise FileNotFoundError(f"digits GAN not found at {path}; run experiments/train_digits_gan.py")
    return load_generator(path)
