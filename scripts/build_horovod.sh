#!/usr/bin/env bash
# Builds Horovod 0.28.1 for one Python environment and installs it there (no deps): PyTorch + Gloo, CPU.
#   bash scripts/build_horovod.sh [PYTHON]      (default: .venv/bin/python of this checkout)
# Why a script: 0.28.1 is the newest release, ships only an sdist, and its CMake files ask for C++14 while
# torch 2.13's headers need C++17; the one-line patch below is all it takes. The wheel is cached
# (~/.cache/sparkzoo/wheels), so a second environment (a packed one for a cluster, say) installs it in
# seconds. Run it after `pip install sparkzoo[horovod]` has failed to build, or before it: the extra is
# then already satisfied.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VPY="${1:-$ROOT/.venv/bin/python}"
CACHE="${SPARKZOO_CACHE:-$HOME/.cache/sparkzoo}"
HOROVOD_VERSION=0.28.1

log() { printf '[horovod] %s\n' "$*"; }
quiet_pip() { "$VPY" -m pip "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2); }

if "$VPY" -c "import horovod.torch" >/dev/null 2>&1; then
  exit 0
fi
"$VPY" -c "import torch" 2>/dev/null || { echo "[horovod] $VPY has no torch: install torch==2.13.0 first" >&2; exit 2; }
mkdir -p "$CACHE/wheels"
whl=$(ls "$CACHE"/wheels/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$whl" ]; then
  log "building horovod $HOROVOD_VERSION from sdist (PyTorch + Gloo, C++17; about 3 minutes)"
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' EXIT
  quiet_pip download -q --no-deps --no-binary :all: -d "$build" "horovod==$HOROVOD_VERSION"
  tar -xzf "$build"/horovod-"$HOROVOD_VERSION".tar.gz -C "$build"
  src="$build/horovod-$HOROVOD_VERSION"
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
    "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
  grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt"
  # cmake from the system (3.25): cmake 4.x rejects the bundled gloo's minimum version.
  (cd "$src" && HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_WITHOUT_MPI=1 HOROVOD_WITH_GLOO=1 HOROVOD_CPU_OPERATIONS=gloo MAKEFLAGS=-j2 \
    quiet_pip wheel -q --no-build-isolation --no-deps -w "$CACHE/wheels" . )
  whl=$(ls "$CACHE"/wheels/horovod-"$HOROVOD_VERSION"-*.whl | head -n1)
fi
log "installing $whl"
quiet_pip install -q --no-deps "$whl"
# Horovod's runtime needs (its wheel is installed without deps): what `sparkzoo[horovod]` lists.
quiet_pip install -q "cloudpickle>=2" "cffi>=1.16" "psutil>=5.9"
"$VPY" -c "import horovod.torch" 
