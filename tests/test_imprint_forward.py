"""imprint_forward: compiled kernels (CPU, CUDA) against the dense torch layer, for outputs and
every gradient; input checks; the fallbacks (trained rows, no extension).

Inputs are dyadic rationals small enough that every dot product is exact in float32, so the
kernel and the dense matmul see bit-identical pre-activations (and kinks): outputs must match
exactly, and gradients (random, non-dyadic upstream) to float32 rounding.
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
import torch.nn.functional as F

from flaudit.auditor.ops.imprint import imprint_forward, imprint_forward_reference
from flaudit.core import native

imprint_mod = importlib.import_module("flaudit.auditor.ops.imprint")

needs_kernels = pytest.mark.skipif(
    not native.extension_available(), reason="flaudit._C not built (pip install --no-build-isolation -e .)"
)
needs_cuda_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and native.has_cuda_kernels()),
    reason="needs a CUDA device and flaudit._C built with its CUDA kernels",
)
ACTS = ["relu", "hardtanh", "identity"]


def make_layer(B, D, K, Q=1, *, seed=0, device="cpu"):
    """x in [0, 1] and queries in [-1, 1] on 1/16 and 1/64 grids, power-of-two scales and
    bias on a 1/1024 grid: exact float32 arithmetic for the sizes used here."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 17, (B, D), generator=g) / 16
    query = torch.randint(-64, 65, (Q, D), generator=g) / 64
    scale = 2.0 ** torch.randint(-3, 3, (K,), generator=g)
    h = x @ query.t()
    spread = 2.0 ** round(torch.log2(h.std().clamp(min=1.0)).item()) if h.numel() > 1 else 1.0
    bias = torch.randint(-1024, 1025, (K,), generator=g) / 1024 * spread
    return [t.float().contiguous().to(device) for t in (x, query, scale, bias)]


def grads(fn, inputs, activation, grad_out, weight=None):
    leaves = [t.clone().requires_grad_() for t in inputs]
    w = None if weight is None else weight.clone().requires_grad_()
    out = fn(*leaves, activation, w)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in leaves] + ([w.grad] if w is not None else [])


def assert_parity(inputs, activation, *, with_weight=True):
    x, _, scale, _ = inputs
    grad_out = torch.randn(x.shape[0], scale.shape[0], generator=torch.Generator().manual_seed(1)).to(x.device)
    weight = torch.zeros(scale.shape[0], x.shape[1], device=x.device) if with_weight else None
    out, got = grads(imprint_forward, inputs, activation, grad_out, weight)
    ref_out, expected = grads(imprint_forward_reference, inputs, activation, grad_out, weight)
    assert torch.equal(out, ref_out)
    for name, a, b in zip(["x", "query", "scale", "bias", "weight"], got, expected):
        assert_close_to_rounding(a, b, f"grad {name}")


def assert_close_to_rounding(a, b, what):
    """Equal up to float32 rounding of sums taken in another order: errors relative to the
    tensor's largest entry (entries that cancel to ~0 carry the absolute error of the sum)."""
    scale = float(b.abs().max()) if b.numel() else 0.0
    torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5 * max(scale, 1e-30), msg=lambda m: f"{what}: {m}")


SHAPES = [(1, 1, 1, 1), (3, 5, 4, 2), (16, 37, 64, 1), (64, 3 * 32 * 32, 512, 1), (9, 100, 96, 4), (5, 8, 9, 3)]


@needs_kernels
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-D{}-K{}-Q{}".format(*s))
def test_kernel_matches_dense_layer_outputs_and_all_gradients(shape, activation):
    assert_parity(make_layer(*shape), activation)


@needs_kernels
def test_kernel_path_is_taken_and_counts_no_dense_matmul(monkeypatch):
    calls = []
    monkeypatch.setattr(imprint_mod, "imprint_forward_reference", lambda *a: calls.append(a))
    x, query, scale, bias = make_layer(8, 20, 16)
    out = imprint_forward(x, query, scale, bias, "relu", torch.zeros(16, 20))
    assert not calls and out.shape == (8, 16)
    raw, h = torch.ops.flaudit.imprint_forward(x, query, scale, bias, 1)
    assert torch.equal(out, raw) and torch.equal(h, x @ query.t())


@needs_kernels
def test_sparse_and_dense_weight_gradients_agree():
    """Hardtanh ramps one bin wide touch one bin per sample: the scatter path; ReLU: the matmul."""
    x, query, _, _ = make_layer(32, 50, 256)
    h = (x @ query.t()).squeeze(1)
    width = 0.25  # 256 ramps of a power-of-two width cover every h: exact arithmetic
    edges = float(h.min().floor()) - 1 + width * torch.arange(256)
    sparse_inputs = [x, query, torch.full((256,), 1 / width), -edges / width]
    grad_pre = torch.randn(32, 256)
    grad_pre[torch.rand(32, 256) < 0.99] = 0
    assert grad_pre.count_nonzero() < imprint_mod.SPARSE_SCATTER_DENSITY * grad_pre.numel()
    torch.testing.assert_close(imprint_mod._dense_weight_grad(grad_pre, x), grad_pre.t() @ x)
    assert_parity(sparse_inputs, "hardtanh")


def test_trained_rows_take_the_exact_dense_path():
    """Once a client has trained the rows (weight != 0), only the dense layer is exact."""
    x, query, scale, bias = make_layer(6, 12, 8)
    weight = torch.randn(8, 12) * 0.1
    out = imprint_forward(x, query, scale, bias, "relu", weight)
    rows = scale[:, None] * query + weight
    torch.testing.assert_close(out, F.relu(x @ rows.t() + bias))


@needs_kernels
def test_meta_shapes_and_output_mask():
    x, query, scale, bias = make_layer(4, 6, 8, 2)
    out, h = torch.ops.flaudit.imprint_forward(*(t.to("meta") for t in (x, query, scale, bias)), 1)
    assert out.shape == (4, 8) and h.shape == (4, 2) and out.device.type == "meta"
    out, h = torch.ops.flaudit.imprint_forward(x, query, scale, bias, 1)
    gx, gq, gs, gb, gp = torch.ops.flaudit.imprint_backward(
        torch.ones(4, 8), x, query, scale, bias, h, 1, [True, False, False, True]
    )
    assert gx.shape == (4, 6) and gq is None and gs is None and gb.shape == (8,) and gp.shape == (4, 8)


# --- bad input: same exception type and message from kernel, wrapper and reference ----------


def _t(*shape):
    return torch.zeros(*shape)


BAD = {
    "x rank": (lambda: (_t(4), _t(1, 4), _t(2), _t(2), 1), ValueError, r"x must be a 2-D tensor \[B, D\], got 1-D"),
    "query rank": (lambda: (_t(3, 4), _t(4), _t(2), _t(2), 1), ValueError, r"query must be a 2-D tensor \[Q, D\]"),
    "scale rank": (lambda: (_t(3, 4), _t(1, 4), _t(2, 1), _t(2), 1), ValueError, r"scale must be a 1-D tensor \[K\]"),
    "x dtype": (lambda: (_t(3, 4).double(), _t(1, 4), _t(2), _t(2), 1), TypeError, r"x must be float32, got"),
    "D mismatch": (lambda: (_t(3, 4), _t(1, 5), _t(2), _t(2), 1), ValueError, r"same D \(dim 1\), got query.shape=\[1, 5\] and x.shape=\[3, 4\]"),
    "no query": (lambda: (_t(3, 4), _t(0, 4), _t(2), _t(2), 1), ValueError, r"at least one vector, got Q=0"),
    "K mismatch": (lambda: (_t(3, 4), _t(1, 4), _t(2), _t(3), 1), ValueError, r"same K, got scale.shape=\[2\] and bias.shape=\[3\]"),
    "K not multiple of Q": (lambda: (_t(3, 4), _t(2, 4), _t(3), _t(3), 1), ValueError, r"K \(3\) must be a multiple of the number of queries Q \(2\)"),
    "non-contiguous": (lambda: (_t(4, 3).t(), _t(1, 4), _t(2), _t(2), 1), ValueError, r"x must be contiguous, got strides \[1, 3\]"),
    "device mismatch": (lambda: (_t(3, 4), _t(1, 4), _t(2), _t(2).to("meta"), 1), ValueError, r"same device, got x on cpu and bias on meta"),
}


@pytest.mark.parametrize("impl", ["kernel", "wrapper", "reference"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_clear_error(case, impl):
    make, exc, pattern = BAD[case]
    x, query, scale, bias, code = make()
    if impl == "kernel":
        if not native.extension_available():
            pytest.skip("flaudit._C not built")
        call = lambda: torch.ops.flaudit.imprint_forward(x, query, scale, bias, code)  # noqa: E731
    else:
        fn = imprint_forward if impl == "wrapper" else imprint_forward_reference
        call = lambda: fn(x, query, scale, bias, "relu")  # noqa: E731
    with pytest.raises(exc, match="imprint_forward: .*" + pattern):
        call()


def test_bad_activation_and_weight():
    x, query, scale, bias = make_layer(3, 4, 2)
    with pytest.raises(ValueError, match="activation must be one of"):
        imprint_forward(x, query, scale, bias, "gelu")
    with pytest.raises(ValueError, match=r"weight must have shape \[K, D\] = \[2, 4\], got \[4, 2\]"):
        imprint_forward(x, query, scale, bias, "relu", torch.zeros(4, 2))
    if native.extension_available():
        with pytest.raises(ValueError, match="activation must be 0 \\(identity\\), 1 \\(relu\\) or 2"):
            torch.ops.flaudit.imprint_forward(x, query, scale, bias, 3)


def test_fallback_to_reference_when_extension_missing(monkeypatch):
    native.extension_available.cache_clear()
    monkeypatch.setitem(sys.modules, "flaudit._C", None)
    try:
        with pytest.warns(RuntimeWarning, match="compiled kernels are not built"):
            assert native.extension_available() is False
        inputs = make_layer(5, 9, 6)
        grad_out = torch.randn(5, 6)
        out, got = grads(imprint_forward, inputs, "relu", grad_out)
        ref, expected = grads(imprint_forward_reference, inputs, "relu", grad_out)
        assert torch.equal(out, ref)
        for a, b in zip(got, expected):
            assert torch.equal(a, b)
    finally:
        monkeypatch.undo()
        native.extension_available.cache_clear()


# --- CUDA ---------------------------------------------------------------------------------------


@needs_cuda_kernels
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("shape", SHAPES + [(300, 3 * 64 * 64, 4096, 1)], ids=lambda s: "B{}-D{}-K{}-Q{}".format(*s))
def test_cuda_kernel_matches_dense_layer(shape, activation):
    assert_parity(make_layer(*shape, device="cuda"), activation)


@needs_cuda_kernels
def test_cuda_and_cpu_kernels_agree():
    inputs = make_layer(16, 300, 128, 2)
    grad_out = torch.randn(16, 128)
    out, got = grads(imprint_forward, inputs, "relu", grad_out, torch.zeros(128, 300))
    cuda_inputs = [t.cuda() for t in inputs]
    out_c, got_c = grads(imprint_forward, cuda_inputs, "relu", grad_out.cuda(), torch.zeros(128, 300, device="cuda"))
    assert torch.equal(out, out_c.cpu())
    for a, b in zip(got, got_c):
        assert_close_to_rounding(b.cpu(), a, "CUDA vs CPU gradient")
