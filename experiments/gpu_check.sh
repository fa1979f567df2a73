#!/usr/bin/env bash
# One short GPU session that answers the open performance questions (issue 19), sized for <= 8 minutes
# on one H100/H200-class GPU:
#   1. installs the CUDA jax wheel (and torch for the reference columns) into the current environment,
#   2. runs the golden-parity tests on the GPU (EDM nets, StyleGAN2, PixArt: float32 at "highest" matmul
#      precision, so TF32 does not blur the 1e-5 bars),
#   3. runs the benchmark table: CIFAR-10 DDPM++ DI and SIM at batch 64, fp32 / bf16, remat none /
#      generator, next to PyTorch eager and torch.compile, and the ahead-of-time PixArt-XL-2 SIM sizing,
# and writes experiments/results/gpu_check/{bench.json,bench.md,aot.json,aot.md,parity.txt,env.txt}.
#
#   bash experiments/gpu_check.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=experiments/results/gpu_check
mkdir -p "$OUT"
START=$(date +%s)
stamp() { echo "[gpu_check] $(( $(date +%s) - START )) s: $*"; }

stamp "install"
pip install -q -e '.[test]' 'jax[cuda12]' >/dev/null
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import jax, torch; print('jax', jax.__version__, jax.devices()); print('torch', torch.__version__, torch.cuda.is_available())"
} | tee "$OUT/env.txt"

stamp "parity tests on the GPU"
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 python -m pytest -q -p no:xdist \
  tests/test_nets_golden.py tests/test_stylegan2.py tests/test_pixart.py 2>&1 | tail -15 | tee "$OUT/parity.txt" || true

stamp "bench: CIFAR-10 DDPM++, DI and SIM, batch 64"
timeout 300 di-jax bench --config cifar10-ddpmpp --method di,sim --batch 64 --precision fp32,bf16 \
  --remat none,generator --torch eager,compile --steps 10 --warmup 2 --peak-tflops bf16=989,fp32=495 \
  --json "$OUT/bench.json" | tee "$OUT/bench.md" || true

stamp "AOT: PixArt-XL-2-512 SIM step, bf16, remat"
timeout 120 di-jax bench --aot --config pixart-xl-2-512 --method sim --precision bf16 --remat all \
  --batch 1,8 --fit-gb 80 --json "$OUT/aot.json" | tee "$OUT/aot.md" || true

stamp "done: results in $OUT"
