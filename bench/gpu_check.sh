#!/usr/bin/env bash
# The prepared GPU check: one command for an offline GPU machine whose Python already has torch,
# numpy, CuPy, pybind11, scikit-build-core, CMake and ninja (the device image). It
#   1. installs what is missing (scipy-openblas32, ase, ...) from a folder of wheels, offline;
#   2. builds and installs ntkal from this tree (no build isolation, no downloads; Hopper code only
#      unless NTKAL_CUDA_ARCHITECTURES says otherwise);
#   3. runs the GPU tests (the areas' GPU classes, tests/test_cuda.py, tests/test_device_path.py) and
#      bench/gpu_engine.py;
#      among them: lazy greedy PV picks = reference/CPU and its scratch << the whitened pool, sketch
#      projections bitwise equal over runs (sparse sign: equal to the CPU); the bench's Targets list
#      greedy PV >= 5x bmdal_reg on the same GPU with <= 1/4 of its memory, two-run bitwise equality;
#   4. writes everything under OUT_DIR: log.txt, build_info.json, pytest_gpu.txt, gpu_engine.txt/json.
# Budget: ~12 minutes (build ~2-3, tests ~1, bench --quick ~2-4, features ~4).
#
# usage: bench/gpu_check.sh OUT_DIR [WHEEL_DIR]       (WHEEL_DIR default: ./wheels)
#        bench/gpu_check.sh --dry-run OUT_DIR [WHEEL_DIR]
# --dry-run: check the prerequisites, list the wheels that would be installed, then run the tests and
# the bench from the source tree as they are (on a machine without a GPU they skip / exit 2, which
# is what the dry run shows), without installing anything.
set -uo pipefail
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
out="${1:?usage: bench/gpu_check.sh [--dry-run] OUT_DIR [WHEEL_DIR]}"
wheels="${2:-wheels}"
here="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$here" || exit 1
log() { echo "[gpu_check $(date +%T)] $*" | tee -a "$out/log.txt"; }
start=$(date +%s)

log "tree $here ($(git rev-parse --short HEAD 2>/dev/null || echo 'no git')), out $out, wheels $wheels, dry-run $dry"
python - <<'EOF' 2>&1 | tee -a "$out/log.txt"
import importlib, shutil, sys
print("python", sys.version.split()[0])
for name in ("torch", "numpy", "cupy", "pybind11", "scikit_build_core", "ase", "scipy_openblas32", "pytest"):
    try:
        m = importlib.import_module(name)
        print(f"  {name:18s} {getattr(m, '__version__', 'present')}")
    except Exception as exc:
        print(f"  {name:18s} missing ({type(exc).__name__})")
for tool in ("cmake", "ninja", "nvcc", "nvidia-smi"):
    print(f"  {tool:18s} {shutil.which(tool) or 'not on PATH'}")
try:
    import torch
    print("  cuda devices     ", torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
except Exception as exc:
    print("  cuda devices      unknown:", exc)
EOF

if [ -d "$wheels" ]; then
  log "wheels offered: $(ls "$wheels" | tr '\n' ' ')"
else
  log "no wheel folder $wheels: only what the image has will be used"
fi

if [ "$dry" -eq 0 ]; then
  if [ -d "$wheels" ] && ls "$wheels"/*.whl > /dev/null 2>&1; then
    log "installing the offered wheels (offline, no dependencies pulled)"
    python -m pip install --no-index --no-deps --find-links "$wheels" "$wheels"/*.whl >> "$out/log.txt" 2>&1 \
      || { log "wheel install failed (see log)"; exit 1; }
  fi
  log "building ntkal (CUDA architectures ${NTKAL_CUDA_ARCHITECTURES:-90-real})"
  python -m pip install --no-index --no-deps --no-build-isolation \
    -C "cmake.define.NTKAL_CUDA_ARCHITECTURES=${NTKAL_CUDA_ARCHITECTURES:-90-real}" \
    -C build-dir=/tmp/ntkal-gpu-build . >> "$out/log.txt" 2>&1 || { log "build failed (see log)"; exit 1; }
  pypath=""
else
  log "dry run: nothing installed; using the source tree (PYTHONPATH=python, its in-place _core if built)"
  pypath="$here/python"
fi

log "build info"
PYTHONPATH="$pypath" python -c "import json, ntkal; print(json.dumps(ntkal.build_info(), indent=1))" \
  > "$out/build_info.json" 2>> "$out/log.txt"
cat "$out/build_info.json" | tee -a "$out/log.txt"

log "GPU tests"
(cd "$here/tests" && PYTHONPATH="$pypath" timeout 300 python -m pytest test_sketch.py test_posterior.py \
  test_shortlist.py test_select.py test_cuda.py test_device_path.py -q -rs \
  -p no:cacheprovider --junitxml="$out/pytest_gpu.xml") > "$out/pytest_gpu.txt" 2>&1
test_rc=$?
tail -n 30 "$out/pytest_gpu.txt" | tee -a "$out/log.txt"
log "pytest exit code $test_rc"

log "bench/gpu_engine.py --quick"
PYTHONPATH="$pypath" timeout 300 python bench/gpu_engine.py --quick --json "$out/gpu_engine.json" \
  > "$out/gpu_engine.txt" 2>&1
bench_rc=$?
tail -n 40 "$out/gpu_engine.txt" | tee -a "$out/log.txt"
log "gpu_engine exit code $bench_rc (2 = no usable CUDA device)"

log "bench/features.py on CUDA (CHGNet: batched featurizer vs the loop vs CHGNet's own E+F; cells, molecules)"
PYTHONPATH="$pypath" timeout 420 python bench/features.py --device cuda --threads 1 --rounds 2 --n 256 \
  --loop-fraction 64 --sets cells molecules20 --json "$out/features_cuda.json" > "$out/features_cuda.txt" 2>&1
feat_rc=$?
tail -n 20 "$out/features_cuda.txt" | tee -a "$out/log.txt"
log "features exit code $feat_rc; total $(( $(date +%s) - start )) s"
[ "$test_rc" -eq 0 ] || exit "$test_rc"
[ "$bench_rc" -eq 0 ] || exit "$bench_rc"
exit "$feat_rc"
