"""imprint_forward (forward + backward) against the dense ``nn.Linear`` + activation of the same
shape, measured in the same run; benches/conftest.py prints "dense / imprint" per group.

Two workloads per size:
* ``layer``: the imprint layer as specified (rows = scale x shared query): gradients for the
  input, the query, the scales and the biases. The issue's target is >= 5x at K=1024,
  D=3*32*32, B=64 on CPU.
* ``client step``: what a client training the crafted layer computes on its first local step,
  where the rows themselves are trained: the dense weight gradient [K, D] as well (a matmul for
  cumulative ReLU bins, a scatter for sparse hardtanh bins).

    .venv/bin/python -m pytest benches/bench_imprint_forward.py
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flaudit.auditor.ops.imprint import imprint_forward
from flaudit.core import native

SIZES = [pytest.param((64, 3 * 32 * 32, 1024), marks=pytest.mark.quick), (64, 3 * 64 * 64, 4096)]  # (B, D, K)
ROUNDS = {"cpu": 10, "cuda": 50}
# The dense reference is a multi-threaded BLAS matmul, the kernel a lighter pass: their ratio
# shifts when other jobs take the second core during one member's rounds.
TOLERANCE = 0.5
ACT = {"relu": F.relu, "hardtanh": lambda t: F.hardtanh(t, 0.0, 1.0)}


def _ids(size):
    return "B{}-D{}-K{}".format(*size)


def _inputs(size, device):
    B, D, K = size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, D, generator=g)
    query = torch.randn(1, D, generator=g) / D**0.5
    h = x @ query.t()
    edges = torch.quantile(h.squeeze(1), torch.linspace(0, 1, K + 1))
    width = (edges[1:] - edges[:-1]).clamp(min=1e-6)
    tensors = {
        "x": x,
        "query": query,
        "scale_relu": torch.ones(K),
        "bias_relu": -edges[:-1].contiguous(),
        "scale_hardtanh": 1 / width,
        "bias_hardtanh": (-edges[:-1] / width).contiguous(),
        "dense_weight": query.expand(K, D).contiguous(),
        "grad_out": torch.randn(B, K, generator=g),
    }
    return {k: v.to(device) for k, v in tensors.items()}


@pytest.fixture(scope="module", params=SIZES, ids=_ids)
def cpu_inputs(request):
    return request.param, _inputs(request.param, "cpu")


@pytest.fixture(scope="module", params=SIZES, ids=_ids)
def cuda_inputs(request):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return request.param, _inputs(request.param, "cuda")


def _imprint(t, act, train_rows):
    x = t["x"].clone().requires_grad_()
    leaves = [t["query"], t[f"scale_{act}"], t[f"bias_{act}"]]
    leaves = [v.clone().requires_grad_(not train_rows) for v in leaves]
    leaves[2].requires_grad_()
    weight = torch.zeros_like(t["dense_weight"]).requires_grad_() if train_rows else None

    def step():
        imprint_forward(x, *leaves, act, weight).backward(t["grad_out"])

    return step


def _dense(t, act):
    x = t["x"].clone().requires_grad_()
    weight = t["dense_weight"].clone().requires_grad_()
    bias = t[f"bias_{act}"].clone().requires_grad_()

    def step():
        ACT[act](F.linear(x, weight, bias)).backward(t["grad_out"])

    return step


CASES = [
    ("imprint", "candidate", "layer", "relu"),
    ("dense", "reference", "layer", "relu"),
    ("imprint", "candidate", "client step", "relu"),
    ("dense", "reference", "client step", "relu"),
    ("imprint", "candidate", "client step", "hardtanh"),
    ("dense", "reference", "client step", "hardtanh"),
]


def _run(benchmark, device, size, case, t):
    label, role, workload, act = case
    if label == "imprint":
        if not (native.extension_available() and (device == "cpu" or native.has_cuda_kernels())):
            pytest.skip("flaudit._C not built for this device")
        step = _imprint(t, act, train_rows=workload == "client step")
    else:
        step = _dense(t, act)
    benchmark.group = f"imprint {workload} {act} {device} B={size[0]} D={size[1]} K={size[2]}"
    benchmark.extra_info.update(role=role, label=label, tolerance=TOLERANCE)
    if device == "cuda":
        def target():
            step()
            torch.cuda.synchronize()
    else:
        target = step
    benchmark.pedantic(target, rounds=ROUNDS[device], warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[2]}-{c[3]}-{c[0]}".replace(" ", "_"))
def test_imprint_cpu(benchmark, cpu_inputs, case):
    size, t = cpu_inputs
    _run(benchmark, "cpu", size, case, t)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[2]}-{c[3]}-{c[0]}".replace(" ", "_"))
def test_imprint_cuda(benchmark, cuda_inputs, case):
    size, t = cuda_inputs
    _run(benchmark, "cuda", size, case, t)
