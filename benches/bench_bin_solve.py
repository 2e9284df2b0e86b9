"""bin_solve: the compiled op against its memory-traffic floor and the torch reference.

The op reads gW once and writes X (almost the same size) once, so ``gW.clone()`` (one read, one
write, one allocation of the same size) is its floor, and the pure-torch reference (three
passes over X) is what it replaces. Each size is one benchmark group; benches/conftest.py
prints "op / clone" and "reference / op" per group.

    .venv/bin/python -m pytest benches/bench_bin_solve.py
"""

from __future__ import annotations

import importlib

import pytest
import torch

from flaudit.auditor.ops import bin_solve_reference

SIZES = [pytest.param((8, 1024, 3072), marks=pytest.mark.quick), (1, 4096, 12288)]  # 96 MiB and 192 MiB of gW
EPS = 1e-8
ROUNDS = {"cpu": 15, "cuda": 50}
# The op, its reference and the clone floor all stream memory, which other jobs on a shared
# machine contend for unevenly between the members' rounds.
TOLERANCE = 0.5


def _extension():
    try:
        return importlib.import_module("flaudit._C")
    except ImportError:
        return None


def _ids(size):
    return "R{}-K{}-D{}".format(*size)


@pytest.fixture(scope="module", params=SIZES, ids=_ids)
def cpu_inputs(request):
    R, K, D = request.param
    g = torch.Generator().manual_seed(0)
    return request.param, torch.randn(R, K, D, generator=g), torch.randn(R, K, generator=g)


@pytest.fixture(scope="module", params=SIZES, ids=_ids)
def cuda_inputs(request):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    R, K, D = request.param
    g = torch.Generator(device="cuda").manual_seed(0)
    gW = torch.randn(R, K, D, generator=g, device="cuda")
    gb = torch.randn(R, K, generator=g, device="cuda")
    return request.param, gW, gb


def _op(gW, gb):
    return torch.ops.flaudit.bin_solve(gW, gb, EPS)


def _reference(gW, gb):
    return bin_solve_reference(gW, gb, EPS)


def _clone(gW, gb):
    return gW.clone()


CASES = [("op", "candidate", _op), ("reference", "reference", _reference), ("clone", "floor", _clone)]


def _run(benchmark, device, size, label, role, fn, gW, gb):
    benchmark.group = f"bin_solve {device} R={size[0]} K={size[1]} D={size[2]}"
    benchmark.extra_info.update(role=role, label=label, tolerance=TOLERANCE, bytes_gW=gW.numel() * 4)
    if device == "cuda":
        def target():
            fn(gW, gb)
            torch.cuda.synchronize()
    else:
        def target():
            fn(gW, gb)
    benchmark.pedantic(target, rounds=ROUNDS[device], warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("label,role,fn", CASES, ids=[c[0] for c in CASES])
def test_bin_solve_cpu(benchmark, cpu_inputs, label, role, fn):
    if label == "op" and _extension() is None:
        pytest.skip("flaudit._C not built")
    size, gW, gb = cpu_inputs
    _run(benchmark, "cpu", size, label, role, fn, gW, gb)


@pytest.mark.cuda
@pytest.mark.parametrize("label,role,fn", CASES, ids=[c[0] for c in CASES])
def test_bin_solve_cuda(benchmark, cuda_inputs, label, role, fn):
    if label == "op" and not (_extension() and _extension().cuda_built()):
        pytest.skip("flaudit._C built without its CUDA kernels")
    size, gW, gb = cuda_inputs
    _run(benchmark, "cuda", size, label, role, fn, gW, gb)
