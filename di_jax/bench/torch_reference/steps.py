"""Diff-Instruct and SIM train steps in PyTorch, written the way the official PyTorch code runs them.

One step = one fake-score (DSM) update on detached generator samples, then one generator update,
then the generator EMA, each phase with its own forward passes (the generator runs twice: once
under no_grad for the fake phase, once with autograd for the generator phase), eager by default:

- fake phase (EDM loss, spec distillation.md §2): x_g = G(sigma_init z) under no_grad;
  ln sigma ~ N(-1.2, 1.2); loss = mean_b sum lambda(sigma) (D_fake(x_g + sigma n) - x_g)^2.
- DI generator phase (§3, §7): ln sigma ~ N(-1.2, 1.2) (config `sigma_gen`), x_t = x_g + sigma n;
  D_fake and D_teacher under no_grad with the same dropout mask; loss = mean_b sum (D_fake - D_teacher) x_t.
- SIM generator phase (§4): gradient flows through x_t into both (frozen) networks;
  y = D_fake - D_teacher, loss = -mean_b sum y / sqrt(||y||^2 + c^2) (D_fake - x_g).
- Adam (beta1 0, beta2 0.999, eps 1e-8, lr 1e-5), NaN/Inf gradients replaced (0, +-1e5) as EDM does,
  EMA of the generator with EDM's half-life rule.

All networks run in train mode (dropout on), as the official DI code does. EDM's augmentation pipe
is not applied in the fake phase (the JAX step does not have it either). `compile=True` wraps each
network's forward in `torch.compile` (optimizer and loss stay eager). `precision='bf16'` runs the
forward passes under `torch.autocast(bfloat16)` with float32 parameters and float32 attention logits.
"""

import copy
from typing import Optional

import torch

from . import METHODS, PRECISIONS
from .networks import build_network

SIGMA_DATA = 0.5


def _nan_to_num_(params):
    for p in params:
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)


class _SameDropout:
    """Restores the RNG state on entry, so two network calls inside see the same dropout masks."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.state = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.get_rng_state()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(self.state, self.device)
        else:
            torch.set_rng_state(self.state)

    def __exit__(self, *exc):
        return False


class TorchDistillStep:
    """Holds teacher, generator, fake score, EMA and optimisers; `step(labels)` runs one train step."""

    def __init__(self, net_config: dict, method: str, batch: int, sigma_init: float = 2.5,
                 precision: str = "fp32", compile: bool = False, device: str = "cpu",
                 sigma_gen: Optional[tuple] = None, pseudo_huber_c: float = 1.0, lr: float = 1e-5,
                 ema_halflife_kimg: float = 500.0, ema_rampup: float = 0.05, seed: int = 0,
                 teacher: Optional[torch.nn.Module] = None):
        if method not in METHODS:
            raise ValueError(f"torch reference: method must be one of {METHODS}; got {method!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"torch reference: precision must be one of {PRECISIONS}; got {precision!r}")
        torch.manual_seed(seed)
        self.method, self.batch, self.sigma_init, self.device = method, batch, sigma_init, torch.device(device)
        self.precision, self.c = precision, pseudo_huber_c
        # (P_mean, P_std) of the generator phase's log-normal sigma: DI as EDM, SIM as SIM eq. B.9-B.10
        self.sigma_gen = sigma_gen or ((-1.2, 1.2) if method == "di" else (-3.5, 2.5))
        self.teacher = (teacher or build_network(net_config)).to(self.device).train().requires_grad_(False)
        self.gen = copy.deepcopy(self.teacher).requires_grad_(True)
        self.fake = copy.deepcopy(self.teacher).requires_grad_(True)
        self.ema = copy.deepcopy(self.gen).eval().requires_grad_(False)
        self.label_dim = self.teacher.label_dim
        self.img_shape = (self.teacher.img_channels, net_config["img_resolution"], net_config["img_resolution"])
        adam = dict(lr=lr, betas=(0.0, 0.999), eps=1e-8)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), **adam)
        self.opt_f = torch.optim.Adam(self.fake.parameters(), **adam)
        self.ema_halflife, self.ema_rampup, self.images_seen = ema_halflife_kimg * 1000, ema_rampup, 0
        self.G, self.Fk, self.T = self.gen, self.fake, self.teacher
        if compile:
            self.G, self.Fk, self.T = (torch.compile(m) for m in (self.gen, self.fake, self.teacher))

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _sigma(self, p_mean, p_std):
        return (torch.randn(self.batch, device=self.device) * p_std + p_mean).exp()

    def _generate(self, labels):
        z = torch.randn(self.batch, *self.img_shape, device=self.device) * self.sigma_init
        s = torch.full((self.batch,), self.sigma_init, device=self.device)
        with self._autocast():
            return self.G(z, s, labels)

    def random_labels(self):
        if not self.label_dim:
            return None
        idx = torch.randint(self.label_dim, (self.batch,), device=self.device)
        return torch.eye(self.label_dim, device=self.device)[idx]

    def step(self, labels=None):
        b = self.batch
        # Phase 1: fake-score DSM update on detached generator samples.
        with torch.no_grad():
            x_g = self._generate(labels)
        sigma = self._sigma(-1.2, 1.2)
        s4 = sigma.reshape(-1, 1, 1, 1)
        with self._autocast():
            d = self.Fk(x_g + torch.randn_like(x_g) * s4, sigma, labels)
        weight = (s4 ** 2 + SIGMA_DATA ** 2) / (s4 * SIGMA_DATA) ** 2
        fake_loss = (weight * (d.float() - x_g) ** 2).sum() / b
        self.opt_f.zero_grad(set_to_none=True)
        fake_loss.backward()
        _nan_to_num_(self.fake.parameters())
        self.opt_f.step()

        # Phase 2: generator update (a second generator forward, with autograd).
        x_g = self._generate(labels)
        sigma = self._sigma(*self.sigma_gen)
        s4 = sigma.reshape(-1, 1, 1, 1)
        x_t = x_g + torch.randn_like(x_g) * s4
        same = _SameDropout(self.device)
        if self.method == "di":
            with torch.no_grad(), self._autocast():
                with same:
                    d_fake = self.Fk(x_t, sigma, labels)
                with same:
                    d_teacher = self.T(x_t, sigma, labels)
            gen_loss = ((d_fake - d_teacher).float() * x_t).sum() / b
        else:
            self.fake.requires_grad_(False)
            with self._autocast():
                with same:
                    d_fake = self.Fk(x_t, sigma, labels)
                with same:
                    d_teacher = self.T(x_t, sigma, labels)
            y = (d_fake - d_teacher).float()
            norm = (y.pow(2).sum(dim=(1, 2, 3), keepdim=True) + self.c ** 2).sqrt()
            gen_loss = -((y / norm) * (d_fake.float() - x_g)).sum() / b
        self.opt_g.zero_grad(set_to_none=True)
        gen_loss.backward()
        if self.method == "sim":
            self.fake.requires_grad_(True)
        _nan_to_num_(self.gen.parameters())
        self.opt_g.step()

        # EMA (EDM's half-life rule with ramp-up).
        self.images_seen += b
        halflife = self.ema_halflife
        if self.ema_rampup:
            halflife = min(halflife, self.images_seen * self.ema_rampup)
        beta = 0.5 ** (b / max(halflife, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), self.gen.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
        return gen_loss.detach(), fake_loss.detach()

    def param_count(self) -> int:
        return sum(p.numel() for p in self.gen.parameters())


def count_step_flops(runner: TorchDistillStep, labels=None) -> Optional[float]:
    """FLOPs of one step by torch's FlopCounterMode (matmul/conv only; eager networks), or None."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    G, Fk, T = runner.G, runner.Fk, runner.T
    runner.G, runner.Fk, runner.T = runner.gen, runner.fake, runner.teacher
    try:
        with FlopCounterMode(display=False) as counter:
            runner.step(labels)
        return float(counter.get_total_flops())
    finally:
        runner.G, runner.Fk, runner.T = G, Fk, T
