#!/usr/bin/env bash
# Idempotent project set-up for a fresh Linux x86_64 machine (2 cores, no GPU, only package
# registries reachable).
#
#   scripts/setup.sh            libtorch 2.13.0 (CPU-only layout, ~1.1 GB) into .deps/libtorch
#   scripts/setup.sh --python   also the full Python env in .venv (torch + transformers + pyarrow
#                               + openai + tensorboard) used only by parity tests and fixture scripts,
#                               and Debian's chromium for the run report's headless-browser test
#
# libtorch comes from PyPI's `torch==2.13.0` wheel (the version tch 0.26 is built against). Only
# `torch/lib`, `torch/include` and the two CUDA runtime libraries that `libtorch_cpu.so` links
# (cudart, cupti) are unpacked; that is enough for a CPU build. For CUDA see README "CUDA".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.deps"
LIBTORCH_DIR="$DEPS/libtorch"
TORCH_VERSION="2.13.0"
CUDA_RUNTIME="nvidia-cuda-runtime==13.0.96"
CUDA_CUPTI="nvidia-cuda-cupti==13.0.85"
PYTHON="${PYTHON:-python3}"
WANT_PYTHON=0
for arg in "$@"; do
  case "$arg" in
    --python) WANT_PYTHON=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

say() { printf '[setup] %s\n' "$*"; }

# Registry downloads on a shared network sometimes stall mid-file. Each pip call already retries
# and resumes (PIP_FLAGS); `retry` re-runs the whole call with back-off on top of that, so one
# dropped connection does not fail a fresh set-up. Finished wheels are reused from pip's cache.
DOWNLOAD_ATTEMPTS="${SETUP_DOWNLOAD_ATTEMPTS:-5}"
PIP_FLAGS=(--retries 10 --timeout 60)
retry() {
  local attempt=1
  until "$@"; do
    if (( attempt >= DOWNLOAD_ATTEMPTS )); then
      say "giving up after $attempt attempts: $*"
      return 1
    fi
    say "attempt $attempt of $DOWNLOAD_ATTEMPTS failed; retrying in $((attempt * 20)) s"
    sleep $((attempt * 20))
    attempt=$((attempt + 1))
  done
}

install_libtorch() {
  local stamp="$LIBTORCH_DIR/.complete-$TORCH_VERSION"
  if [[ -f "$stamp" ]]; then
    say "libtorch $TORCH_VERSION already in $LIBTORCH_DIR (skipped)"
    return
  fi
  local wheels="$DEPS/wheels"
  mkdir -p "$wheels"
  say "downloading torch==$TORCH_VERSION wheel (+ CUDA runtime and CUPTI) from PyPI into $wheels"
  # Platform flags make the download independent of the local Python version.
  retry "$PYTHON" -m pip download --quiet "${PIP_FLAGS[@]}" --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_25_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$wheels" "torch==$TORCH_VERSION" "$CUDA_RUNTIME" "$CUDA_CUPTI"
  rm -rf "$LIBTORCH_DIR.tmp"
  mkdir -p "$LIBTORCH_DIR.tmp"
  say "unpacking torch/lib, torch/include and nvidia/* into $LIBTORCH_DIR"
  "$PYTHON" - "$wheels" "$LIBTORCH_DIR.tmp" "$TORCH_VERSION" <<'PY'
import glob, os, sys, zipfile
wheels, out, version = sys.argv[1], sys.argv[2], sys.argv[3]
def unpack(pattern, prefixes):
    paths = sorted(glob.glob(os.path.join(wheels, pattern)))
    if not paths:
        sys.exit(f"setup.sh: no wheel matching {pattern} in {wheels}")
    with zipfile.ZipFile(paths[-1]) as z:
        for info in z.infolist():
            if info.filename.startswith(prefixes) and not info.is_dir():
                z.extract(info, out)
unpack(f"torch-{version}-*.whl", ("torch/lib/", "torch/include/"))
unpack("nvidia_cuda_runtime-*.whl", ("nvidia/",))
unpack("nvidia_cuda_cupti-*.whl", ("nvidia/",))
# torch-sys checks the libtorch version through this file, which the wheel lacks.
with open(os.path.join(out, "torch", "build-version"), "w") as f:
    f.write(version + "\n")
PY
  rm -rf "$LIBTORCH_DIR"
  mv "$LIBTORCH_DIR.tmp" "$LIBTORCH_DIR"
  touch "$stamp"
  rm -rf "$wheels"
  say "libtorch $TORCH_VERSION ready: LIBTORCH=$LIBTORCH_DIR/torch ($(du -sh "$LIBTORCH_DIR" | cut -f1))"
}

install_python() {
  local venv="$ROOT/.venv"
  local req="$ROOT/scripts/requirements-python.txt"
  local stamp="$venv/.complete-$(sha256sum "$req" | cut -c1-16)"
  if [[ -f "$stamp" ]]; then
    say "python env already in $venv (skipped)"
    return
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    say "creating virtual env $venv"
    "$PYTHON" -m venv "$venv"
  fi
  say "installing pinned Python packages from $req (torch with its CUDA wheels is ~2.7 GB)"
  retry "$venv/bin/python" -m pip install --quiet "${PIP_FLAGS[@]}" --upgrade pip
  retry "$venv/bin/python" -m pip install --quiet "${PIP_FLAGS[@]}" --resume-retries 20 -r "$req"
  rm -f "$venv"/.complete-*
  touch "$stamp"
  say "python env ready: $("$venv/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
}

# The run report's test (tests/run_report.rs) loads report.html in headless Chromium; Debian's
# package, installed with apt (as root) where it is missing. Without root or apt the test says
# it skipped the browser check.
install_chromium() {
  if command -v chromium >/dev/null 2>&1; then
    say "chromium already installed: $(command -v chromium) (skipped)"
    return
  fi
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    say "chromium missing and apt-get unavailable without root: the report's browser test will skip"
    return
  fi
  say "installing Debian's chromium (headless browser for the run report's test)"
  retry apt-get update -qq
  retry env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  say "chromium ready: $(chromium --version 2>/dev/null || echo installed)"
}

install_libtorch
if [[ "$WANT_PYTHON" == 1 ]]; then
  install_python
  install_chromium
fi
say "done"
