#!/usr/bin/env bash
# Builds `orchard --features cuda` on a machine without a GPU or a CUDA install (the GPU machine has no Rust
# toolchain): nvcc, headers and libraries from NVIDIA's wheels on the package index, and a link-time stub of the
# driver library (libcuda.so.1, as the toolkit's own stubs/libcuda.so: every driver entry point cudarc and
# candle's kernels reference, returning an error); the GPU machine's driver provides the real one at run time.
#
#   benches/compare/cuda_build.sh [OUT]      # OUT: the stripped binary (default .gpu/orchard-cuda); beside it
#                                            # engine-tests-cuda, the engine's test binary (cuda_check.py --tests)
#
# Tested 2026-12-07 with nvidia-cuda-nvcc 13.5 (cudarc 0.19 knows CUDA up to 13.4: CUDARC_CUDA_VERSION=13040 — the
# 13.x driver API is the same), sm_90 (H100/H200). Output ≈ 88 MB stripped: over the device tool's 64 MiB per
# call, so carry it in parts (split -b 60M) and `cat` them together there.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-.gpu/orchard-cuda}
ENV=${CUDA_WHEELS_ENV:-/work/cudaenv}
if [ ! -x "$ENV/bin/pip" ]; then python3 -m venv "$ENV"; fi
"$ENV/bin/pip" install -q "nvidia-cuda-nvcc==13.*" "nvidia-cuda-cccl==13.*" "nvidia-cuda-runtime==13.*" \
  "nvidia-cublas==13.*" "nvidia-curand==10.*" "nvidia-cuda-nvrtc==13.*"
C=$(echo "$ENV"/lib/python3*/site-packages/nvidia/cu13)
LINKS="$ENV/links"
mkdir -p "$LINKS"
for f in "$C"/lib/*.so.*; do b=$(basename "$f"); ln -sf "$f" "$LINKS/${b%%.so.*}.so"; done
export PATH="$C/bin:$PATH" CUDA_ROOT="$C" CUDA_PATH="$C" CUDA_HOME="$C" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13040} LIBRARY_PATH="$LINKS:$C/lib" CARGO_TARGET_DIR=target/cuda
# First pass compiles everything; its link may fail on -lcuda. The stub then takes the driver symbols the compiled
# crates reference.
if [ ! -e "$LINKS/libcuda.so" ]; then
  cargo build --release --features cuda || true
  syms=$(for f in target/cuda/release/deps/libcudarc-*.rlib target/cuda/release/deps/libcandle_kernels-*.rlib \
      target/cuda/release/build/candle-kernels-*/out/*.a; do nm -A "$f" 2>/dev/null; done |
    awk '$2=="U" && $3 ~ /^cu[A-Z]/ {print $3}' | sort -u)
  [ -n "$syms" ] || { echo "no driver symbols found: did the first pass compile?" >&2; exit 1; }
  stub=$(mktemp --suffix .c)
  for s in $syms; do echo "int $s(void) { return 999; }"; done > "$stub"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINKS/libcuda.so" "$stub"
  rm -f "$stub"
fi
cargo build --release --features cuda
mkdir -p "$(dirname "$OUT")"
strip -o "$OUT" target/cuda/release/orchard
tests=$(cargo test -p orchard-engine --features cuda --test tests --no-run --message-format json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "tests" and m.get("executable"):
        print(m["executable"])')
strip -o "$(dirname "$OUT")/engine-tests-cuda" "$tests"
ls -la "$OUT" "$(dirname "$OUT")/engine-tests-cuda"
