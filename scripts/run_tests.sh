#!/usr/bin/env bash
# The test command (README "Run the tests", and what CI runs): installs what the tests need
# (idempotent; only the package registries are used), then runs pytest. Extra arguments go
# to pytest, e.g.  bash scripts/run_tests.sh -k comfyui -x
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

bash scripts/comfyui_env.sh setup      # .venv: torch 2.13.0, ComfyUI 0.3.75, this pack [test]
bash scripts/comfyui_env.sh browser    # Debian chromium + Playwright (browser tests)
bash scripts/comfyui_env.sh registry   # comfy-cli (registry validation test)

exec .venv/bin/python -m pytest tests "$@"
