#!/usr/bin/env bash
# One prepared check of the trainer on a GPU machine that has no network, no Rust toolchain and
# its own PyTorch (whose version may differ from the 2.13.0 that tch 0.26 expects).
#
#   scripts/device-check.sh prepare [options]   here: build the binary against that machine's
#                                               libtorch version, put it in device-check/bin/
#   scripts/device-check.sh run [options]       there: doctor, bf16-vs-f32 log-prob parity,
#                                               bench train (+ measured peak GPU memory next to
#                                               the plan), bench generate; one summary table
#
# prepare (CPU machine, network to PyPI only):
#   --torch VERSION     libtorch release of the GPU machine (default 2.11.0, as its python3's
#                       torch was last seen: 2.11.0+cu130). Its `torch` wheel (~0.5 GB, lib/,
#                       include/ and version.py only) is fetched from PyPI once into
#                       .deps/device-check/torch-VERSION/. tch's version check is bypassed
#                       (LIBTORCH_BYPASS_VERSION_CHECK=1); if tch 0.26's generated wrappers do
#                       not compile against that version, prepare says so (which ones) and fails.
#   --stub-missing      build anyway: the wrappers that do not compile throw when called (a copy
#                       of torch-sys, used through a cargo path override; Cargo.lock untouched).
#                       Against 2.11.0 that includes the CUDA varlen decode's flash call, so
#                       `run` then benchmarks in f32 (masked decode) instead of bf16.
#   --libtorch DIR      build against this libtorch folder instead (holding lib/ and include/,
#                       e.g. a venv's site-packages/torch); nothing is downloaded
#   --no-cuda           build without `--features cuda` (for a CPU-only libtorch)
#   --target-dir DIR    cargo target folder (default .deps/device-check/target, kept apart from
#                       the usual one: another libtorch rebuilds torch-sys)
#   --bundle DIR        where the binary goes (default device-check/bin; git-ignored, <= 64 MiB)
#   Then carry device-check/bin to the GPU machine with the working tree and call `run` there
#   (with this workplace's device tool: carry ["device-check/bin"], command
#   `scripts/device-check.sh run`, timeout_s 540 or more).
#
# run (GPU machine; on a CPU with --device cpu --quick, the same sequence in well under a minute):
#   --device cuda|cpu   (default cuda) GPU-only steps (measured GPU memory) are skipped on cpu
#   --quick             tiny model and sizes (the CPU check); default: the mid preset (8 layers
#                       of width 1,024, head dim 128, full vocabulary), bf16 on CUDA
#   --bin FILE          the binary (default device-check/bin/spatialthinker)
#   --libtorch DIR      the libtorch to run on (default: the folder of python3's `import torch`;
#                       `rpath` runs on the binary's own run path, with no LD_LIBRARY_PATH)
#   --python PY         python used to find torch and to read JSON (default python3)
#   --out DIR           logs and summary (default $OUT if set, else device-check/out); at most 8
#                       files, so that all of them come back from a device run
#   --work DIR          checkpoints and synthetic data (default device-check/work; removed at the
#                       end unless --keep-work)
#   --set KEY=VALUE     extra override for bench train and plan (repeatable), e.g.
#                       --set model.gradient_checkpointing=true
#   --budget SECONDS    total time for all steps (default 470: the whole run stays under 8 min);
#                       each step has its own timeout inside it
# Exit status of run: 0 when every step is ok or skipped, 1 otherwise.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEFAULT_TORCH_VERSION="2.11.0"
TCH_LIBTORCH="2.13.0"   # the libtorch release tch 0.26 (torch-sys 0.26) is generated from
VARLEN_OP="_flash_attention_forward_no_dropout_inplace"   # the engine's CUDA varlen decode
BUNDLE_LIMIT_BYTES=$((64 * 1024 * 1024))

say() { printf '[device-check] %s\n' "$*" >&2; }
die() { printf '[device-check] error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -uo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

# The libtorch version recorded in folder $1, as `spatialthinker doctor` reads it: a wheel's
# version.py, a zip's build-version, or the headers' version.h.
libtorch_version() {
  local dir="$1" h
  if [[ -f "$dir/version.py" ]]; then
    sed -n "s/^__version__ *= *['\"]\([^'\"]*\)['\"].*/\1/p" "$dir/version.py" | head -n1
    return
  fi
  if [[ -s "$dir/build-version" ]]; then
    head -n1 "$dir/build-version" | tr -d '[:space:]'
    return
  fi
  for h in include/torch/headeronly/version.h include/torch/csrc/api/include/torch/version.h; do
    if grep -q "define TORCH_VERSION_MAJOR" "$dir/$h" 2>/dev/null; then
      awk '$1 == "#define" && $2 ~ /^TORCH_VERSION_(MAJOR|MINOR|PATCH)$/ { v[$2] = $3 }
           END { print v["TORCH_VERSION_MAJOR"] "." v["TORCH_VERSION_MINOR"] "." v["TORCH_VERSION_PATCH"] }' "$dir/$h"
      return
    fi
  done
}

release_of() { printf '%s\n' "${1%%+*}"; }

# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------

fetch_libtorch() {
  local version="$1" python="$2"
  local cache="$ROOT/.deps/device-check/torch-$version"
  if [[ -f "$cache/.complete" ]]; then
    say "libtorch $version already unpacked in $cache (skipped)"
    printf '%s\n' "$cache/torch"
    return
  fi
  local wheels="$ROOT/.deps/device-check/wheels"
  mkdir -p "$wheels"
  say "fetching torch==$version (the wheel alone, no CUDA dependencies: ~0.5 GB) from PyPI into $wheels"
  # Platform flags make the download independent of this machine's Python; the libraries and
  # headers are the same in every cpXY wheel of a release.
  "$python" -m pip download --quiet --retries 10 --timeout 60 --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$wheels" "torch==$version" >&2 \
    || die "could not download torch==$version from PyPI (is that release published for Linux x86_64?)"
  rm -rf "$cache.tmp"
  mkdir -p "$cache.tmp"
  say "unpacking torch/lib, torch/include and torch/version.py into $cache"
  "$python" - "$wheels" "$cache.tmp" "$version" <<'PY' || die "unpacking the torch wheel failed"
import glob, os, sys, zipfile
wheels, out, version = sys.argv[1], sys.argv[2], sys.argv[3]
paths = sorted(glob.glob(os.path.join(wheels, f"torch-{version}-*.whl")))
if not paths:
    sys.exit(f"no torch-{version} wheel in {wheels}")
with zipfile.ZipFile(paths[-1]) as z:
    for info in z.infolist():
        name = info.filename
        if info.is_dir():
            continue
        if name.startswith(("torch/lib/", "torch/include/")) or name == "torch/version.py":
            z.extract(info, out)
PY
  rm -rf "$cache"
  mv "$cache.tmp" "$cache"
  touch "$cache/.complete"
  rm -f "$wheels"/torch-"$version"-*.whl
  printf '%s\n' "$cache/torch"
}

# The source folder of the torch-sys crate this workspace locks (in cargo's registry).
torch_sys_source() {
  (cd "$ROOT" && cargo metadata --format-version 1 --locked 2>/dev/null) | "$1" -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "torch-sys":
        print(os.path.dirname(p["manifest_path"]))
        break'
}

# Compiles (syntax only) torch-sys' C++ wrappers against the headers of libtorch folder $2, with
# the flags torch-sys' build script uses; the compiler's messages go to $3.
check_wrappers() {
  local src="$1" libtorch="$2" log="$3"
  "${CXX:-c++}" -fsyntax-only -std=c++17 -D_GLIBCXX_USE_CXX11_ABI=1 -DGLOG_USE_GLOG_EXPORT \
    -I"$libtorch/include" -I"$libtorch/include/torch/csrc/api/include" \
    "$src/libtch/torch_api.cpp" "$src/libtch/torch_api_generated.cpp" >"$log" 2>&1
}

# The wrapper functions (atg_*) of torch_api_generated.cpp $2 that the compiler log $3 reports
# errors in; with "stub" as $4, also replaces each one's body by a throw (an error on the Rust
# side when called), naming libtorch version $5.
failing_wrappers() {
  "$1" - "$2" "$3" "${4:-list}" "${5:-}" <<'PY'
import re, sys
cpp, log, mode, version = sys.argv[1:5]
text = open(log, errors="replace").read()
if re.search(r"torch_api\.cpp:\d+:\d+: error:", text):
    sys.exit("torch_api.cpp itself does not compile: no stub can help")
lines = open(cpp).read().split("\n")
start = re.compile(r"^(\w[\w\s*]*?)\b(atg_\w+)\(")
found = {}
for m in re.finditer(r"torch_api_generated\.cpp:(\d+):\d+: error:", text):
    i = int(m.group(1)) - 1
    while i >= 0 and not start.match(lines[i]):
        i -= 1
    if i < 0:
        sys.exit(f"error at line {m.group(1)} is outside every wrapper function")
    found[i] = start.match(lines[i])
for i in sorted(found, reverse=True):
    ret, name = found[i].group(1).strip(), found[i].group(2)
    print(name[len("atg_"):])
    if mode != "stub":
        continue
    end = i
    while lines[end] != "}":
        end += 1
    body = ["  PROTECT(",
            f'    throw std::runtime_error("{name[4:]} is not in libtorch {version}: this binary '
            'was built by scripts/device-check.sh prepare --stub-missing");',
            "  )"]
    if ret != "void":
        body.append("  return {};")
    lines[i + 1:end] = body
if mode == "stub":
    open(cpp, "w").write("\n".join(lines))
PY
}

# Explains a failed build from its log: the wrappers' C++ (torch-sys), the link, or the crate.
explain_build_failure() {
  local log="$1" version="$2"
  if grep -q "failed to run custom build command for .torch-sys" "$log"; then
    say "FAILED: tch 0.26's generated C++ wrappers (torch-sys 0.26, written for libtorch 2.13.0) do not compile against libtorch $version."
    say "first compiler errors:"
    grep -E "error:" "$log" | grep -v "^error: failed to run custom build" | head -n 15 >&2
    say "a binary for this machine needs libtorch 2.13.0 there, or a tch release made for $version."
  elif grep -qE "undefined reference|linking with .cc. failed|cannot find -l" "$log"; then
    say "FAILED: the binary does not link against libtorch $version (tch 0.26 is written for 2.13.0)."
    say "first linker errors:"
    grep -E "undefined reference|cannot find -l|ld: " "$log" | head -n 15 >&2
  else
    say "FAILED: cargo build failed (not in torch-sys' wrappers or the link); see the errors above and $log"
  fi
}

cmd_prepare() {
  local torch_version="$DEFAULT_TORCH_VERSION" libtorch="" cuda=1 stub=0
  local target_dir="$ROOT/.deps/device-check/target" bundle="$ROOT/device-check/bin"
  local python="${PYTHON:-python3}"
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --torch) torch_version="${2:?--torch needs a version}"; shift 2 ;;
      --libtorch) libtorch="${2:?--libtorch needs a folder}"; shift 2 ;;
      --no-cuda) cuda=0; shift ;;
      --stub-missing) stub=1; shift ;;
      --target-dir) target_dir="${2:?--target-dir needs a folder}"; shift 2 ;;
      --bundle) bundle="${2:?--bundle needs a folder}"; shift 2 ;;
      --python) python="${2:?--python needs an interpreter}"; shift 2 ;;
      -h|--help) usage; exit 0 ;;
      *) die "prepare: unknown argument '$1' (see --help)" ;;
    esac
  done
  command -v cargo >/dev/null || die "cargo is not on PATH: prepare runs where Rust is installed"
  if [[ -z "$libtorch" ]]; then
    libtorch="$(fetch_libtorch "$torch_version" "$python")" || exit 1
  fi
  libtorch="$(cd "$libtorch" 2>/dev/null && pwd)" || die "--libtorch: no such folder"
  [[ -f "$libtorch/lib/libtorch_cpu.so" ]] || die "$libtorch/lib has no libtorch_cpu.so: not a libtorch folder"
  if [[ "$cuda" == 1 && ! -f "$libtorch/lib/libtorch_cuda.so" ]]; then
    die "$libtorch/lib has no libtorch_cuda.so: a CPU-only libtorch (use --no-cuda to build for the CPU)"
  fi
  local version
  version="$(libtorch_version "$libtorch")"
  [[ -n "$version" ]] || die "no version found in $libtorch (version.py, build-version or include/torch/.../version.h)"
  local features=()
  [[ "$cuda" == 1 ]] && features=(--features cuda)
  mkdir -p "$target_dir"
  local log="$target_dir/device-check-build.log" overrides=() stubbed=""
  if [[ "$(release_of "$version")" != "$TCH_LIBTORCH" ]]; then
    # tch's wrappers are generated from libtorch 2.13.0's operator list: check them against
    # this version's headers first (minutes) rather than fail at the end of the build
    local src check_log="$target_dir/device-check-wrappers.log"
    src="$(torch_sys_source "$python")"
    [[ -f "$src/libtch/torch_api_generated.cpp" ]] || die "cannot find torch-sys' source (cargo metadata)"
    say "tch 0.26 is generated from libtorch $TCH_LIBTORCH; checking its C++ wrappers ($src/libtch) against libtorch $version's headers (2-4 min)"
    if ! check_wrappers "$src" "$libtorch" "$check_log"; then
      local missing
      missing="$(failing_wrappers "$python" "$src/libtch/torch_api_generated.cpp" "$check_log" | sort)" \
        || die "tch 0.26's wrappers do not compile against libtorch $version, and not only in generated wrappers: see $check_log"
      say "FAILED: $(wc -l <<<"$missing") of tch 0.26's generated wrappers do not compile against libtorch $version (functions it lacks or declares otherwise):"
      tr '\n' ' ' <<<"$missing" | fold -s -w 96 | sed 's/^/[device-check]   /' >&2; echo >&2
      grep -m3 "error:" "$check_log" | cut -c1-240 | sed 's/^/[device-check]   /' >&2
      if [[ "$stub" == 0 ]]; then
        say "a binary for this machine needs libtorch $TCH_LIBTORCH there, or: rerun with --stub-missing to"
        say "build with those wrappers raising an error when called. The trainer calls only $VARLEN_OP"
        say "(the CUDA varlen decode in bf16), so 'run' then benchmarks in f32 on CUDA."
        exit 1
      fi
      local patched
      patched="$ROOT/.deps/device-check/$(basename "$src")-for-libtorch-$version"
      rm -rf "$patched"
      cp -r "$src" "$patched" && chmod -R u+w "$patched"
      stubbed="$(failing_wrappers "$python" "$patched/libtch/torch_api_generated.cpp" "$check_log" stub "$version" | sort | paste -sd, -)" \
        || die "stubbing the wrappers failed"
      say "--stub-missing: building with a copy of torch-sys whose $(tr ',' '\n' <<<"$stubbed" | wc -l) failing wrappers throw: $patched"
      # a path override replaces the registry's torch-sys without touching Cargo.lock
      overrides=(--config "paths=[\"$patched\"]")
    else
      say "tch 0.26's wrappers compile against libtorch $version"
    fi
  fi
  say "building spatialthinker (release${features[*]:+, ${features[*]}}) against libtorch $version in $libtorch"
  say "target folder $target_dir (a first build takes 10-20 min on 2 cores); log $log"
  # The CUDA libraries libtorch_cuda.so needs (cuBLAS, cuDNN, ...) are not here, only on the GPU
  # machine: let the link leave their symbols to the loader there.
  if ! (cd "$ROOT" && LIBTORCH="$libtorch" LIBTORCH_BYPASS_VERSION_CHECK=1 CARGO_TARGET_DIR="$target_dir" \
        RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,--allow-shlib-undefined" \
        cargo build --release -p trainer --bin spatialthinker "${features[@]}" "${overrides[@]}" 2>&1 | tee "$log" >&2); then
    explain_build_failure "$log" "$version"
    exit 1
  fi
  local built="$target_dir/release/spatialthinker"
  [[ -x "$built" ]] || die "cargo reported success but $built is missing"
  mkdir -p "$bundle"
  strip -o "$bundle/spatialthinker.tmp" "$built" 2>/dev/null || cp "$built" "$bundle/spatialthinker.tmp"
  mv "$bundle/spatialthinker.tmp" "$bundle/spatialthinker"
  local glibc
  glibc="$(objdump -T "$bundle/spatialthinker" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1)"
  cat >"$bundle/build-info" <<EOF
libtorch_version=$version
libtorch_dir=$libtorch
features=${features[*]:-none}
stubbed=${stubbed:-none}
git_commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo "+local changes")
built_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)
glibc_needed=${glibc:-unknown}
EOF
  local size
  size="$(du -sb "$bundle" | cut -f1)"
  if (( size > BUNDLE_LIMIT_BYTES )); then
    die "$bundle is $((size / 1048576)) MiB, over the 64 MiB that can travel with the working tree"
  fi
  say "ready: $bundle ($((size / 1048576)) MiB): spatialthinker built against libtorch $version"
  sed 's/^/[device-check]   /' "$bundle/build-info" >&2
  say "on the GPU machine, carry ${bundle#"$ROOT"/} with the working tree and run: scripts/device-check.sh run"
}

# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------

STEPS=()      # step names, in order
declare -A STATUS SECS RESULT

record() { # name status seconds result
  STEPS+=("$1"); STATUS[$1]="$2"; SECS[$1]="$3"; RESULT[$1]="$4"
  printf '[device-check] %-15s %4ss  %-7s %s\n' "$1" "$3" "$2" "$4" >&2
}

# Seconds a step may take: its own limit, within what is left of the whole run's budget.
step_timeout() {
  local want="$1" left=$((DEADLINE - SECONDS - 5))
  (( left < want )) && want=$left
  printf '%s\n' "$want"
}

# Runs "$@" under timeout into log $1 (appended); prints nothing; returns the command's status
# (124 on timeout).
timed() {
  local log="$1" limit="$2"; shift 2
  printf '$ %s\n' "$*" >>"$log"
  if (( limit < 5 )); then
    echo "not run: the run's time budget is spent" >>"$log"
    return 124
  fi
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
}

# The first error a log reports (for the summary line).
first_error() {
  grep -v '^\$ ' "$1" 2>/dev/null | grep -m1 -A1 -E '^Error|error:|Caused by|cannot|undefined' \
    | grep -v '^--$' | tr -s '\n ' ' ' | cut -c1-240
}

json_field() { # file key...: prints the keys (tab-separated) of the last JSON object in file
  "$PY" - "$@" <<'PY'
import json, sys
path, keys = sys.argv[1], sys.argv[2:]
text = open(path, errors="replace").read()
decoder, obj, at = json.JSONDecoder(), None, 0
while True:
    at = text.find("{", at)
    if at < 0:
        break
    if at == 0 or text[at - 1] == "\n":  # objects start a line
        try:
            value, end = decoder.raw_decode(text, at)
            if isinstance(value, dict):
                obj = value
            at = end
            continue
        except ValueError:
            pass
    at += 1
if obj is None:
    sys.exit(1)
def get(k):
    v = obj
    for part in k.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v
print("\t".join("" if get(k) is None else get(k) if isinstance(get(k), str) else json.dumps(get(k)) for k in keys))
PY
}

cmd_run() {
  local device="cuda" quick=0 bin="$ROOT/device-check/bin/spatialthinker" libtorch="" keep_work=0
  local out="${OUT:-$ROOT/device-check/out}" work="$ROOT/device-check/work" budget=470
  local extra_sets=()
  PY="python3"
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --device) device="${2:?--device needs cuda or cpu}"; shift 2 ;;
      --quick) quick=1; shift ;;
      --bin) bin="${2:?--bin needs a file}"; shift 2 ;;
      --libtorch) libtorch="${2:?--libtorch needs a folder or rpath}"; shift 2 ;;
      --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
      --out) out="${2:?--out needs a folder}"; shift 2 ;;
      --work) work="${2:?--work needs a folder}"; shift 2 ;;
      --keep-work) keep_work=1; shift ;;
      --set) extra_sets+=(--set "${2:?--set needs KEY=VALUE}"); shift 2 ;;
      --budget) budget="${2:?--budget needs seconds}"; shift 2 ;;
      -h|--help) usage; exit 0 ;;
      *) die "run: unknown argument '$1' (see --help)" ;;
    esac
  done
  case "$device" in cuda|cpu) ;; *) die "--device must be cuda or cpu, not '$device'" ;; esac
  [[ -x "$bin" ]] || die "no binary at $bin: run 'scripts/device-check.sh prepare' on a machine with Rust, and carry device-check/bin"
  bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
  command -v "$PY" >/dev/null || die "no $PY: run needs python to find torch and read JSON (--python PY)"
  mkdir -p "$out" "$work" || die "cannot create $out or $work"
  out="$(cd "$out" && pwd)"; work="$(cd "$work" && pwd)"
  rm -f "$out"/*.log "$out/summary.txt"
  DEADLINE=$((SECONDS + budget))
  cd "$ROOT" || die "no $ROOT"

  # sizes: the mid preset on the GPU, the tiny one for the quick CPU check
  local preset dtype prompts group resp steps warmup micro micro_exp gen_batch gen_prompt gen_new train_t
  if [[ "$quick" == 1 ]]; then
    preset=tiny; prompts=2; group=2; resp=8; steps=1; warmup=0; micro=2; micro_exp=4
    gen_batch=2; gen_prompt=16; gen_new=8; train_t=120
  else
    preset=mid; prompts=4; group=8; resp=128; steps=2; warmup=1; micro=4; micro_exp=16
    gen_batch=8; gen_prompt=512; gen_new=128; train_t=240
  fi
  if [[ "$device" == cuda ]]; then dtype=bf16; else dtype=f32; fi
  local model="$work/runs/bench-rollout/$preset-random-stop"

  # --- torch: the libtorch to run on, and its version against the binary's -------------------
  local t0=$SECONDS torch_dir="" torch_version="" built_version="" note=""
  local info
  info="$(dirname "$bin")/build-info"
  [[ -f "$info" ]] && built_version="$(sed -n 's/^libtorch_version=//p' "$info")"
  local stubbed_ops=""
  [[ -f "$info" ]] && stubbed_ops="$(sed -n 's/^stubbed=//p' "$info")"
  if [[ "$device" == cuda && ",$stubbed_ops," == *",$VARLEN_OP,"* ]]; then
    # bf16 on CUDA decodes through the stubbed flash call; f32 takes the masked path
    dtype=f32
    say "this binary was built with $VARLEN_OP stubbed (prepare --stub-missing): benchmarks run in f32"
  fi
  {
    echo "binary: $bin"
    [[ -f "$info" ]] && cat "$info"
  } >"$out/torch.log"
  if [[ "$libtorch" == rpath ]]; then
    note="the binary's own run path ($(readelf -d "$bin" 2>/dev/null | sed -n 's/.*R[UN]*PATH.*\[\(.*\)\]/\1/p'))"
  elif [[ -n "$libtorch" ]]; then
    torch_dir="$(cd "$libtorch" 2>/dev/null && pwd)" || { record torch FAIL $((SECONDS - t0)) "--libtorch $libtorch: no such folder"; libtorch=failed; }
  else
    torch_dir="$("$PY" -c 'import torch, os; print(os.path.dirname(torch.__file__))' 2>>"$out/torch.log" | tail -n1)"
    if [[ -z "$torch_dir" ]]; then
      if [[ "$device" == cpu ]]; then
        note="no torch in $PY: the binary's own run path"
        libtorch=rpath
      else
        record torch FAIL $((SECONDS - t0)) "$PY cannot import torch (see torch.log); pass --libtorch DIR"
        libtorch=failed
      fi
    fi
  fi
  local ok_to_go=1
  if [[ "$libtorch" == failed ]]; then
    ok_to_go=0
  elif [[ -n "$torch_dir" ]]; then
    torch_version="$(libtorch_version "$torch_dir")"
    echo "libtorch: $torch_dir ($torch_version)" >>"$out/torch.log"
    if [[ ! -f "$torch_dir/lib/libtorch_cpu.so" ]]; then
      record torch FAIL $((SECONDS - t0)) "$torch_dir/lib has no libtorch_cpu.so"
      ok_to_go=0
    elif [[ -n "$built_version" && "$(release_of "$torch_version")" != "$(release_of "$built_version")" ]]; then
      record torch FAIL $((SECONDS - t0)) "this machine has torch $torch_version, the binary was built against $built_version: run 'scripts/device-check.sh prepare --torch $(release_of "$torch_version")' and carry device-check/bin again"
      ok_to_go=0
    else
      export LD_LIBRARY_PATH="$torch_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      local against="${built_version:-not recorded (no build-info beside the binary; doctor compares)}"
      if [[ -n "$built_version" && "$torch_version" != "$built_version" ]]; then
        against="$built_version (same release, another build: same C++ API)"
      fi
      record torch ok $((SECONDS - t0)) "libtorch ${torch_version:-unknown} at $torch_dir; binary built against $against"
    fi
  else
    record torch ok $((SECONDS - t0)) "$note"
  fi
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" >>"$out/torch.log"

  local names=(doctor model parity plan bench-train gpu-memory bench-generate)
  if [[ "$ok_to_go" == 0 ]]; then
    local n
    for n in "${names[@]}"; do record "$n" skipped 0 "(no usable libtorch: see the torch line)"; done
    print_summary "$out" "$device" "$quick"
    return 1
  fi

  # --- doctor -------------------------------------------------------------------------------
  t0=$SECONDS
  local rc fields
  timed "$out/doctor.log" "$(step_timeout 90)" "$bin" doctor --json; rc=$?
  if fields="$(json_field "$out/doctor.log" libtorch libtorch_built_against libtorch_cuda_build libtorch_cuda_loaded cuda cuda_devices bf16_cuda 2>/dev/null)"; then
    local lt lb lc ll cu nd bc
    IFS=$'\t' read -r lt lb lc ll cu nd bc <<<"$fields"
    local summary="libtorch $lt (built against ${lb:-unknown}), CUDA build $lc, libtorch_cuda loaded $ll, cuda $cu, $nd GPU(s), bf16_cuda $bc"
    if [[ $rc -ne 0 ]]; then
      record doctor FAIL $((SECONDS - t0)) "exit $rc: $(first_error "$out/doctor.log")"
    elif [[ "$device" == cuda && "$cu" != true ]]; then
      record doctor FAIL $((SECONDS - t0)) "$summary: CUDA is unavailable (built without --features cuda, or no GPU visible?)"
    else
      record doctor ok $((SECONDS - t0)) "$summary"
    fi
  else
    record doctor FAIL $((SECONDS - t0)) "exit $rc, no report: $(first_error "$out/doctor.log")"
  fi

  # --- model: a random checkpoint, written by `bench rollout --preset` -------------------------
  t0=$SECONDS
  if [[ -f "$model/model.safetensors" ]]; then
    record model ok 0 "$preset random checkpoint already in $model"
  else
    # a minimal rollout bench (1 prompt, 2 tokens) on the CPU writes the preset's checkpoint
    (cd "$work" && timed "$out/model.log" "$(step_timeout 180)" "$bin" bench rollout --preset "$preset" \
      --prompts 1 --group-size 1 --prompt-len 8 --max-new-tokens 2 --max-num-seqs 1 --device cpu); rc=$?
    if [[ $rc -eq 0 && -f "$model/model.safetensors" ]]; then
      record model ok $((SECONDS - t0)) "$preset random checkpoint ($(du -sh "$model/model.safetensors" | cut -f1)) in $model"
    else
      record model FAIL $((SECONDS - t0)) "bench rollout --preset $preset exit $rc: $(first_error "$out/model.log")"
    fi
  fi
  local have_model=0
  [[ -f "$model/model.safetensors" ]] && have_model=1

  # --- parity: teacher-forced log-probs in bf16 against f32, same device ----------------------
  t0=$SECONDS
  if [[ "$have_model" == 0 ]]; then
    record parity skipped 0 "(no model)"
  else
    local response="<observe>A red cube is to the left of a blue ball on a wooden table.</observe> <scene>{\"objects\": [{\"id\": \"cube.1\", \"bbox\": [10, 20, 40, 60]}]}</scene> <think>The cube is left of the ball.</think> <answer>left</answer>"
    local lp=("$bin" logprobs --model "$model" --image "$ROOT/tests/fixtures/infer/scene.png"
      --prompt "Where is the red cube with respect to the blue ball?" --response "$response"
      --device "$device" --json)
    local rc32 rc16
    timed "$out/parity.log" "$(step_timeout 120)" "${lp[@]}" --dtype f32; rc32=$?
    local f32_line; f32_line="$(grep '^{' "$out/parity.log" | tail -n1)"
    timed "$out/parity.log" "$(step_timeout 120)" "${lp[@]}" --dtype bf16; rc16=$?
    local bf16_line; bf16_line="$(grep '^{' "$out/parity.log" | tail -n1)"
    if [[ $rc32 -ne 0 || $rc16 -ne 0 || -z "$f32_line" || "$f32_line" == "$bf16_line" ]]; then
      record parity FAIL $((SECONDS - t0)) "logprobs exit f32 $rc32, bf16 $rc16: $(first_error "$out/parity.log")"
    else
      local verdict
      verdict="$("$PY" - "$f32_line" "$bf16_line" 2>>"$out/parity.log" <<'PY'
import json, math, sys
a, b = (json.loads(s)["logprobs"] for s in sys.argv[1:3])
if len(a) != len(b) or not a:
    print(f"FAIL\tlengths differ or empty: f32 {len(a)}, bf16 {len(b)}")
    sys.exit()
d = [abs(x - y) for x, y in zip(a, b)]
mx, mean = max(d), sum(d) / len(d)
# bf16 keeps 8 significant bits: a random model's log-probs (about -12) move by a few hundredths;
# a wrong kernel or layout moves them by whole units
MAX_ABS, MEAN_ABS = 0.25, 0.05
finite = all(math.isfinite(x) for x in a + b)
ok = finite and mx <= MAX_ABS and mean <= MEAN_ABS
print(("ok" if ok else "FAIL") + f"\t{len(d)} response tokens, mean f32 log-prob {sum(a) / len(a):.3f}: "
      f"max |bf16 - f32| {mx:.4f}, mean {mean:.4f} (limits {MAX_ABS}, {MEAN_ABS})")
PY
)"
      [[ -n "$verdict" ]] || verdict=$'FAIL\tcould not compare (see parity.log)'
      echo "$verdict" >>"$out/parity.log"
      record parity "${verdict%%$'\t'*}" $((SECONDS - t0)) "$device: ${verdict#*$'\t'}"
    fi
  fi

  # the training sizes, shared by plan and bench train
  local sets=(--set "model.path=$model" --set "model.dtype=$dtype" --set "model.output_vocab=full"
    --set "trainer.device=$device" --set "trainer.output_dir=$work/bench-train"
    --set "data.rollout_batch_size=$prompts" --set "actor.global_batch_size=$prompts"
    --set "rollout.n=$group" --set "data.max_response_length=$resp"
    --set "actor.micro_batch_size_per_device_for_update=$micro"
    --set "actor.micro_batch_size_per_device_for_experience=$micro_exp"
    --set "data.synthetic_train_rows=64" --set "data.synthetic_val_rows=8")
  if [[ "$dtype" == bf16 ]]; then
    sets+=(--set "actor.optimizer_state_dtype=bf16" --set "actor.kahan_summation=true")
  fi
  if [[ "$device" == cuda ]]; then
    # as the 7B recipe runs: layers recomputed in the backward, the reference streamed from host
    sets+=(--set "model.gradient_checkpointing=true" --set "model.offload_reference=true")
  fi
  sets+=("${extra_sets[@]}")
  local gpu_total_gib=""
  if [[ "$device" == cuda ]] && command -v nvidia-smi >/dev/null; then
    gpu_total_gib="$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n1 | awk '{ printf "%.1f", $1 / 1024 }')"
  fi

  # --- plan (if this binary has the command) ---------------------------------------------------
  t0=$SECONDS
  local plan_peak="" plan_need=""
  if [[ "$have_model" == 0 ]]; then
    record plan skipped 0 "(no model)"
  elif ! "$bin" plan --help >/dev/null 2>&1; then
    record plan skipped 0 "(this binary has no 'plan' command)"
  else
    local plan_args=(plan --config "$ROOT/configs/tiny-cpu.toml" "${sets[@]}")
    [[ -n "$gpu_total_gib" ]] && plan_args+=(--gpu-memory-gib "$gpu_total_gib")
    timed "$out/plan.log" "$(step_timeout 60)" "$bin" "${plan_args[@]}"; rc=$?
    # "peak 0.41 GiB in the update phase: needs a device of 0.46 GiB (10% allocator headroom)"
    plan_peak="$(sed -nE 's/^peak ([0-9.]+) GiB.*/\1/p' "$out/plan.log" | head -n1)"
    plan_need="$(sed -nE 's/.*needs a device of ([0-9.]+) GiB.*/\1/p' "$out/plan.log" | head -n1)"
    if [[ -z "$plan_peak" ]]; then # another layout: the largest "N GiB" on a line naming a peak
      plan_peak="$(grep -i 'peak' "$out/plan.log" | grep -oE '[0-9]+(\.[0-9]+)? ?GiB' | tr -d ' GiB' | sort -g | tail -n1)"
    fi
    if [[ $rc -eq 0 ]]; then
      record plan ok $((SECONDS - t0)) "peak ${plan_peak:-?} GiB planned${plan_need:+, a device of $plan_need GiB with headroom}${gpu_total_gib:+ (this one: $gpu_total_gib GiB)}; prompts sized at data.max_prompt_length"
    else
      record plan FAIL $((SECONDS - t0)) "exit $rc${plan_peak:+, peak $plan_peak GiB planned}: does not fit or failed (see plan.log)"
    fi
  fi

  # --- bench train, with the GPU's memory polled every 0.2 s -----------------------------------
  t0=$SECONDS
  local poller="" mem_log="$work/gpu-memory.samples" base_mib="" bench_plan=""
  rm -f "$mem_log"
  if [[ "$have_model" == 0 ]]; then
    record bench-train skipped 0 "(no model)"
  else
    if [[ "$device" == cuda ]] && command -v nvidia-smi >/dev/null; then
      base_mib="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n1 | tr -d ' ')"
      (while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n1; sleep 0.2; done) >"$mem_log" &
      poller=$!
    fi
    timed "$out/bench-train.log" "$(step_timeout "$train_t")" "$bin" bench train \
      --config "$ROOT/configs/tiny-cpu.toml" "${sets[@]}" \
      --prompts "$prompts" --group-size "$group" --response-length "$resp" \
      --steps "$steps" --warmup "$warmup"; rc=$?
    if [[ -n "$poller" ]]; then kill "$poller" 2>/dev/null; wait "$poller" 2>/dev/null; fi
    if [[ $rc -eq 0 ]] && fields="$(json_field "$out/bench-train.log" tokens_per_s step_s peak_rss_gib response_tokens_per_step plan_peak_gib 2>/dev/null)"; then
      local tps sps rss rtok
      IFS=$'\t' read -r tps sps rss rtok bench_plan <<<"$fields"
      [[ -n "$bench_plan" ]] && bench_plan="$(printf '%.2f' "$bench_plan")"
      record bench-train ok $((SECONDS - t0)) "$(printf '%s, %s: %.0f response tokens/s, %.2f s/step (%.0f tokens/step, %dx%d), peak RSS %.2f GiB%s' "$preset" "$dtype" "$tps" "$sps" "$rtok" "$prompts" "$group" "$rss" "${bench_plan:+, planned peak $bench_plan GiB}")"
    else
      record bench-train FAIL $((SECONDS - t0)) "exit $rc: $(first_error "$out/bench-train.log")"
    fi
  fi

  # --- gpu-memory: the peak nvidia-smi saw during bench train, next to the plan ----------------
  if [[ "$device" != cuda ]]; then
    record gpu-memory skipped 0 "(no CUDA): GPU memory is measured with nvidia-smi on a GPU only"
  elif [[ -z "$poller" ]]; then
    record gpu-memory skipped 0 "(no nvidia-smi, or no bench train)"
  else
    local peak_mib
    peak_mib="$(grep -E '^[0-9]+$' "$mem_log" | sort -n | tail -n1)"
    {
      echo "nvidia-smi memory.used samples (MiB, every 0.2 s) during bench train; before it: ${base_mib:-?} MiB"
      tr '\n' ' ' <"$mem_log"; echo
    } >>"$out/bench-train.log"
    if [[ -z "$peak_mib" ]]; then
      record gpu-memory FAIL 0 "nvidia-smi gave no samples"
    else
      record gpu-memory ok 0 "$(awk -v p="$peak_mib" -v b="${base_mib:-0}" -v plan="${bench_plan:-${plan_peak:-}}" -v n="$(grep -cE '^[0-9]+$' "$mem_log")" 'BEGIN {
        printf "measured peak %.2f GiB used (%.2f before the run; %d samples; with the CUDA context and the allocator cache) vs plan %s", p / 1024, b / 1024, n, (plan == "" ? "n/a" : plan " GiB") }')"
    fi
  fi

  # --- bench generate --------------------------------------------------------------------------
  t0=$SECONDS
  if [[ "$have_model" == 0 ]]; then
    record bench-generate skipped 0 "(no model)"
  else
    timed "$out/bench-generate.log" "$(step_timeout 120)" "$bin" bench generate --model "$model" \
      --batch "$gen_batch" --prompt-len "$gen_prompt" --new-tokens "$gen_new" \
      --device "$device" --dtype "$dtype"; rc=$?
    if [[ $rc -eq 0 ]] && fields="$(json_field "$out/bench-generate.log" prefill_tokens_per_s decode_tokens_per_s 2>/dev/null)"; then
      local ptps dtps
      IFS=$'\t' read -r ptps dtps <<<"$fields"
      record bench-generate ok $((SECONDS - t0)) "$(printf '%s, %s, batch %d, %d+%d tokens: prefill %.0f tokens/s, decode %.0f tokens/s' "$preset" "$dtype" "$gen_batch" "$gen_prompt" "$gen_new" "$ptps" "$dtps")"
    else
      record bench-generate FAIL $((SECONDS - t0)) "exit $rc: $(first_error "$out/bench-generate.log")"
    fi
  fi

  if [[ "$keep_work" == 0 ]]; then
    rm -rf "$work"
  fi
  print_summary "$out" "$device" "$quick"
}

print_summary() {
  local out="$1" device="$2" quick="$3" n failed=0 mode=""
  for n in "${STEPS[@]}"; do
    [[ "${STATUS[$n]}" == ok || "${STATUS[$n]}" == skipped ]] || failed=$((failed + 1))
  done
  [[ "$quick" == 1 ]] && mode=", quick"
  {
    echo "== device-check summary: device $device$mode, $(date -u +%Y-%m-%dT%H:%M:%SZ), ${SECONDS}s in all =="
    printf '%-15s %5s  %-7s %s\n' step time status result
    for n in "${STEPS[@]}"; do
      printf '%-15s %4ss  %-7s %s\n' "$n" "${SECS[$n]}" "${STATUS[$n]}" "${RESULT[$n]}"
    done
    if [[ $failed -eq 0 ]]; then
      echo "== all steps ok or skipped; logs in $out =="
    else
      echo "== $failed step(s) failed; logs in $out =="
    fi
  } | tee "$out/summary.txt"
  [[ $failed -eq 0 ]]
}

case "${1:-}" in
  prepare) shift; cmd_prepare "$@" ;;
  run) shift; cmd_run "$@" ;;
  -h|--help|help) usage ;;
  "") usage >&2; exit 2 ;;
  *) printf "device-check.sh: unknown command '%s' (prepare or run; see --help)\n" "$1" >&2; exit 2 ;;
esac
