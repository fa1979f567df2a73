"""Checks that the JAX step does not recompute the generator forward (PERF.md, "fusion").

    python experiments/reference_torch/fusion_check.py

Counts convolutions in the optimised HLO of one network forward and of the whole compiled step (tiny
config, batch 2): a DI step without recomputation needs 8 forward-equivalents of convolutions (gen fwd
1 + gen bwd 2 + fake fwd 1 + fake bwd 2 + fake and teacher fwd 2), SIM 10 (+ input-gradient backward
through fake and teacher); config.remat="generator" must add exactly one generator forward.
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import jax, numpy as np
from di_jax import bench
from di_jax.nets import build_network
from di_jax.train import networks, sharding, step as step_lib
from di_jax.train.config import base_config
name = 'tiny'
cfg = bench.network_config(name); m = build_network(cfg)
r = cfg['img_resolution']; B = 2
x = np.zeros((B, 3, r, r), np.float32); lab = np.zeros((B, 10), np.float32); s = np.ones((B,), np.float32)
p = bench.random_params(m, cfg)
fwd = jax.jit(lambda p: m.apply({'params': p}, x, s, class_labels=lab)).lower(p).compile()
F = bench._cost_flops(fwd); convs = lambda c: len(re.findall(r'= [^ ]+ convolution\(', c.as_text()))
print('one forward: flops', F, 'convolutions', convs(fwd))
mesh = sharding.make_mesh(1)
for method in ('di', 'sim'):
    for remat in ('none', 'generator'):
        c = base_config(); c.method = method; c.batch_size = B; c.remat = remat
        c.sigma_gen = dict(kind='edm' if method == 'di' else 'sim')
        nets = networks.edm_networks(m, (3, r, r), 10, 2.5, dropout=True)
        st = step_lib.init_state(c, nets, p, mesh)
        labels = sharding.host_to_global(np.array([1, 2]), mesh)
        comp, t = step_lib.compile_step(step_lib.make_train_step(c, nets, mesh), st, p, labels)
        f = bench._cost_flops(comp)
        print(method, 'remat', remat, 'step flops', f, 'ratio to one forward %.2f' % (f / F), 'convolutions', convs(comp),
              '(%.2f x forward)' % (convs(comp) / convs(fwd)))
