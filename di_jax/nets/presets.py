"""Official pretrained EDM configurations (spec edm_architecture.md section 6)."""

_DDPMPP = dict(model_type="SongUNet", img_resolution=32, img_channels=3, augment_dim=9, model_channels=128,
               channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16], dropout=0.13,
               embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
               decoder_type="standard", resample_filter=[1, 1])
_NCSNPP = dict(_DDPMPP, embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
               resample_filter=[1, 3, 3, 1])


def edm_config_presets() -> dict:
    """name -> config dict for `build_network` (published parameter counts in spec section 6)."""
    ffhq = dict(img_resolution=64, channel_mult=[1, 2, 2, 2], dropout=0.05, label_dim=0)
    return {
        "cifar10-32x32-cond-vp": dict(_DDPMPP, precond="VPPrecond", label_dim=10),      # 55,735,299
        "cifar10-32x32-uncond-vp": dict(_DDPMPP, precond="VPPrecond", label_dim=0),     # 55,733,891
        "cifar10-32x32-cond-ve": dict(_NCSNPP, precond="VEPrecond", label_dim=10),      # 56,400,643
        "cifar10-32x32-uncond-ve": dict(_NCSNPP, precond="VEPrecond", label_dim=0),     # 56,397,827
        "ffhq-64x64-uncond-vp": dict(_DDPMPP, precond="VPPrecond", **ffhq),             # 61,805,571
        "ffhq-64x64-uncond-ve": dict(_NCSNPP, precond="VEPrecond", **ffhq),             # 62,761,091
        "afhqv2-64x64-uncond-vp": dict(_DDPMPP, precond="VPPrecond", **dict(ffhq, dropout=0.25)),
        "afhqv2-64x64-uncond-ve": dict(_NCSNPP, precond="VEPrecond", **dict(ffhq, dropout=0.25)),
        "imagenet-64x64-cond-adm": dict(precond="EDMPrecond", model_type="DhariwalUNet", img_resolution=64,
                                        img_channels=3, label_dim=1000, augment_dim=0, model_channels=192,
                                        channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[32, 16, 8],
                                        dropout=0.10, use_fp16=True),                  # 295,899,267
    }
