"""SIM-DiT-600M: PixArt-α (PixArt-XL-2-512x512) distilled by Score Implicit Matching into a one-step
text-to-image generator in the SD VAE's latent space (SIM paper §5.2 and appendix B.3; reported aesthetic
score 6.42, 99.6 % of the teacher's, after ~16k iterations).

The paper's settings: SAM-LLaVA-Caption prompts (T5-XXL embeddings, up to 120 tokens); bf16; Adam(0,
0.999) with lr 5e-6 for both networks; batch 1024 reached by gradient accumulation 8 with gradient
checkpointing (4 x A100-40G); sigma ~ LogNormal(-2.0, 2.0) (ln sigma ~ N(-2, 2^2)) in both phases; both
loss weights constant 1; the teacher's sigma rounded to its 1000 discrete DDPM levels (the pixart
teacher does this, di_jax.teachers.discrete). The pseudo-Huber distance is SIM's default.

Not stated by the paper, our choices: the classifier-free guidance scale of the teacher
(`teacher.guidance_scale`, D = D_uncond + w (D_cond - D_uncond) with the null-prompt embedding; 1.0 here,
i.e. the conditional teacher; set it with --config.teacher.guidance_scale=4.5 for PixArt's sampling
default), the generator's sigma_init (2.5, as for EDM), the EMA (EDM's rule) and the 16k-step budget.

    di-jax embed-prompts --prompts captions.txt --encoder t5-v1_1-xxl/ --out prompts/    # once
    di-jax distill --config pixart_sim --workdir runs/sim_dit \
        --config.teacher.path=PixArt-XL-2-512x512/ --config.prompts.path=prompts/
"""

import ml_collections

from di_jax.configs.base import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.method = "sim"
    c.teacher = ml_collections.ConfigDict(dict(kind="pixart", path="", official="PixArt-alpha/PixArt-XL-2-512x512",
                                               guidance_scale=1.0, null_prompt=""))
    c.teacher.dtype = "bfloat16"                 # stored in bf16 on the devices (its compute is bf16 too)
    c.prompts = ml_collections.ConfigDict(dict(path="", seed=0))
    c.networks = ml_collections.ConfigDict(dict(kind="edm", sigma_init=2.5, dropout=-1.0, dtype="bfloat16"))
    c.batch_size = 1024
    c.grad_accum = 8
    c.remat = "all"
    c.num_steps = 16_000
    c.fake_steps = 1
    for opt in (c.gen_optim, c.fake_optim):
        opt.update(lr=5e-6, b1=0.0, b2=0.999, eps=1e-8, clip=0.0, weight_decay=0.0)
    c.sigma_gen = ml_collections.ConfigDict(dict(kind="edm", p_mean=-2.0, p_std=2.0))
    c.sigma_fake = ml_collections.ConfigDict(dict(kind="edm", p_mean=-2.0, p_std=2.0))
    c.fake_weight = "one"
    c.augment.p = 0.0
    c.log_every = 50
    c.ckpt_every = 1000
    c.sample_every = 1000
    c.num_samples = 16
    c.eval.kind = "none"
    return c
