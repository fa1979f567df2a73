"""DMD2's distribution-matching loss without its GAN term, class-conditional ImageNet 64x64.

The official DMD2 script experiments/imagenet/imagenet_lr2e-6_scratch.sh and main/edm/train_edm.py:
AdamW(0.9, 0.999, weight decay 0.01) at lr 2e-6 for both networks, gradient clipping at norm 10,
5 fake-score updates per generator update, batch 40 x 7 GPUs = 280, the generator at sigma 80
(conditioning_sigma), k ~ U{20..980} on its ascending Karras grid, networks without dropout, no EMA
(half-life ~0 here: beta = 0), half precision (bfloat16 here, fp16 there).

    di-jax distill --config imagenet64_cond_dmd --workdir runs/in64_dmd --config.teacher.path=FILE.pkl
"""

from di_jax.configs.paper import edm_recipe


def get_config():
    c = edm_recipe("dmd", "edm-imagenet-64x64-cond-adm.pkl", batch_size=280, num_steps=400_000, lr=2e-6,
                   b2=0.999, sigma_init=80.0, augment_p=0.0)
    c.fake_steps = 5
    for opt in (c.gen_optim, c.fake_optim):
        opt.update(b1=0.9, weight_decay=0.01, clip=10.0)
    c.networks.dropout = 0.0
    c.networks.dtype = "bfloat16"
    c.ema.update(halflife_kimg=1e-6, rampup=0.0)
    return c
