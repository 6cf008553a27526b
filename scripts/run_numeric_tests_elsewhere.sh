#!/usr/bin/env bash
# The numeric tests (models, golden data, noise, scheduling, sampling, training objective,
# VAE learning) once more under CPU kernel paths other than this machine's best, so that a
# result hinging on one CPU's instruction set, its BLAS path or the thread count fails here
# and not on a user's machine (an AMD CPU once generated nothing). CI runs it after the
# README's test command (.ci/run); run it after 'bash scripts/run_tests.sh' set up .venv.
#
#   AVX2 kernels (what AMD Zen and older Intel CPUs get from ATen, MKL and oneDNN), one thread
#   the portable kernels of ATen with MKL held to SSE4.2 (ARM and other CPUs' arithmetic order)
#
# oneDNN computes the bf16 convolutions of training: with AMX tiles on recent Xeons, with
# AVX-512 or AVX2 code elsewhere. The README's test command ran them on this machine's best
# path; the AVX2 run holds oneDNN to AVX2 too (ONEDNN_MAX_CPU_ISA), so the bf16 VAE/GAN tests
# pass on both paths wherever CI lands (on an AMX Xeon they once gave NaN on one path only).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
NUMERIC=(tests/models tests/test_noise.py tests/test_rng.py tests/test_scheduling.py tests/test_latents.py
         tests/sampling tests/training/test_dit_objective.py tests/training/test_dit_objective_golden.py
         tests/training/test_vae_trainer.py::test_tiny_vae_learns_moving_shapes_and_exports_a_loadable_folder
         tests/training/test_vae_trainer.py::test_gan_bf16_and_gradient_checkpointing_paths_run
         tests/training/test_vae_losses.py)
# tests/models/test_vae_budget.py counts bytes, not arithmetic: the README's run is enough (40 s saved each).
# tests/models/test_fused.py compiles the fused chains with inductor for the CPU, a path only
# CUDA takes in use (CPUs run them eagerly, which the other model tests cover): 30 s saved each.
# Each run compiles (tests/models/test_compile.py) into its own inductor cache: torch reuses
# cached kernels across ATEN_CPU_CAPABILITY settings, so code vectorised for AVX2 met the
# portable run's headers and failed to build ("'at::vec' has not been declared").
CACHES=$(mktemp -d)
trap 'rm -rf "$CACHES"' EXIT
run() {
  echo "== numeric tests with $*"
  local cache
  cache=$(mktemp -d "$CACHES/inductor.XXXX")
  env TORCHINDUCTOR_CACHE_DIR="$cache" "$@" .venv/bin/python -m pytest "${NUMERIC[@]}" -q -p no:cacheprovider \
    --ignore=tests/models/test_vae_budget.py --ignore=tests/models/test_fused.py
}
run ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# The portable run holds oneDNN to SSE4.1 as well: on an AMX Xeon, ATen's bf16 attention
# otherwise asks oneDNN for AMX-packed weights, which ATen's portable kernels refuse
# ("pack_vnni2 is only supported when avx512 is supported"), a mix no real CPU runs.
run ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41
