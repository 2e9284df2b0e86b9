#!/usr/bin/env bash
# Compiles every csrc/*.cu with nvcc (-c only, objects in a temp dir) with the flags
# torch's BuildExtension would use for the flaudit._C extension, so CUDA kernels are known to
# build on machines without a GPU. Prints one line per file; exits non-zero on any failure.
#
#   PYTHON       the interpreter whose torch provides the headers (default .venv/bin/python)
#   CUDA_HOME    the CUDA toolkit (default /usr/local/cuda)
#   TORCH_CUDA_ARCH_LIST  architectures, as setup.py (default "8.0;9.0")
#   NVCC_JOBS    parallel nvcc processes (default: number of CPUs)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PYTHON="${PYTHON:-.venv/bin/python}"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
NVCC="$CUDA_HOME/bin/nvcc"

if [[ ! -x "$NVCC" ]]; then
  echo "check_cuda_compile: nvcc not found at $NVCC (set CUDA_HOME)" >&2
  exit 2
fi
shopt -s nullglob
sources=(csrc/*.cu)
if (( ${#sources[@]} == 0 )); then
  echo "check_cuda_compile: no csrc/*.cu files"
  exit 0
fi

# One flag per line, from torch itself: include dirs, ABI and extension macros,
# BuildExtension's common nvcc flags, and setup.py's own nvcc flags (keep those in sync).
flags_file="$(mktemp)"
outdir="$(mktemp -d)"
trap 'rm -rf "$outdir" "$flags_file"' EXIT
if ! CUDA_HOME="$CUDA_HOME" ARCH_LIST="$ARCH_LIST" "$PYTHON" - >"$flags_file" 2>"$outdir/flags.err" <<'PY'
import os, sys, sysconfig
import torch
from torch.utils import cpp_extension as ce

def include_paths():
    try:
        return ce.include_paths(device_type="cuda")
    except TypeError:  # torch < 2.6 spelled it include_paths(cuda=True)
        return ce.include_paths(cuda=True)

# torch read $CUDA_HOME (exported above) at import, so its CUDA include dir is the toolkit's.
inc = include_paths() + [os.path.join(os.environ["CUDA_HOME"], "include"), sysconfig.get_paths()["include"]]
flags = [f"-I{p}" for p in dict.fromkeys(inc)]
flags += ["-DFLAUDIT_WITH_CUDA=1", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"]
abi = getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", None)
if abi is not None:
    flags.append(f"-D_GLIBCXX_USE_CXX11_ABI={int(abi)}")
flags += list(ce.COMMON_NVCC_FLAGS)
flags += ["--compiler-options", "-fPIC", "-O3", "--use_fast_math", "-std=c++20"]
for arch in os.environ["ARCH_LIST"].replace(",", ";").split(";"):
    arch = arch.strip()
    if not arch:
        continue
    num = arch.replace("+PTX", "").replace(".", "")
    flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    if arch.endswith("+PTX"):
        flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
sys.stdout.write("\n".join(flags) + "\n")
PY
then
  echo "check_cuda_compile: could not get the build flags from $PYTHON's torch:" >&2
  cat "$outdir/flags.err" >&2
  exit 2
fi
mapfile -t FLAGS <"$flags_file"

jobs="${NVCC_JOBS:-$(nproc 2>/dev/null || echo 1)}"
pids=()
for src in "${sources[@]}"; do
  while (( $(jobs -rp | wc -l) >= jobs )); do wait -n; done
  name="$(basename "$src" .cu)"
  (
    start=$SECONDS
    if "$NVCC" "${FLAGS[@]}" -c "$src" -o "$outdir/$name.cu.o" >"$outdir/$name.log" 2>&1; then
      echo "PASS $src ($((SECONDS - start)) s)" >"$outdir/$name.result"
    else
      echo "FAIL $src ($((SECONDS - start)) s)" >"$outdir/$name.result"
      exit 1
    fi
  ) &
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done

for src in "${sources[@]}"; do
  name="$(basename "$src" .cu)"
  if [[ -f "$outdir/$name.result" ]]; then cat "$outdir/$name.result"; else echo "FAIL $src (no result)"; status=1; fi
  if grep -q '^FAIL' "$outdir/$name.result" 2>/dev/null; then sed 's/^/    /' "$outdir/$name.log" | tail -40; fi
done
exit "$status"
