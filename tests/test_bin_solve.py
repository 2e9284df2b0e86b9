"""bin_solve: compiled kernels (CPU, CUDA) against the pure-torch reference, input checks, fallback.

The kernels multiply by a per-bin reciprocal where the reference divides, so values are compared
to a few float32 ulps; the validity mask and the zeros of invalid bins must match exactly.
"""

from __future__ import annotations

import importlib
import sys
from unittest import mock

import pytest
import torch

from flaudit.auditor.ops import bin_solve, bin_solve_reference
from flaudit.core import native

# The module, not the function `auditor.ops.bin_solve` that shadows it in the package namespace.
bin_solve_mod = importlib.import_module("flaudit.auditor.ops.bin_solve")


def _kernels_built() -> bool:
    # Not native.extension_available(): its "not built" warning is an error under this
    # project's pytest settings, and a skip reason says it better here.
    try:
        importlib.import_module("flaudit._C")
    except ImportError:
        return False
    return True


KERNELS = _kernels_built()
CUDA_KERNELS = KERNELS and torch.cuda.is_available() and importlib.import_module("flaudit._C").cuda_built()
needs_kernels = pytest.mark.skipif(not KERNELS, reason="flaudit._C not built (pip install --no-build-isolation -e .)")


def _marks(*marks):
    def apply(fn):
        for mark in marks:
            fn = mark(fn)
        return fn

    return apply


needs_cuda = _marks(pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))
needs_cuda_kernels = _marks(
    pytest.mark.cuda,
    pytest.mark.skipif(not CUDA_KERNELS, reason="needs a CUDA device and flaudit._C built with its CUDA kernels"),
)


def kernel(gW, gb, eps=1e-8):
    return torch.ops.flaudit.bin_solve(gW, gb, eps)


def make_inputs(R, K, D, *, device="cpu", seed=0, ties=True):
    """Random gradients whose bias differences include an exact tie (bins 0-1) and a near tie
    below eps (bins 1-2), so every shape with K > 2 exercises both sides of the eps rule."""
    g = torch.Generator().manual_seed(seed)
    gW = torch.randn(R, K, D, generator=g)
    gb = torch.randn(R, K, generator=g)
    if ties and K > 2:
        gb[:, 1] = gb[:, 0]  # exact zero difference -> invalid
        gb[:, 2] = gb[:, 1] + 1e-9  # below eps -> invalid (difference of 0 or ~1e-9 in float32)
    return gW.to(device), gb.to(device)


def assert_matches_reference(X, valid, gW, gb, eps):
    X_ref, valid_ref = bin_solve_reference(gW, gb, eps)
    assert X.shape == X_ref.shape and valid.shape == valid_ref.shape
    assert X.dtype == torch.float32 and valid.dtype == torch.bool
    assert X.device == gW.device and valid.device == gW.device
    assert torch.equal(valid, valid_ref)
    torch.testing.assert_close(X, X_ref, rtol=4e-7, atol=0.0, equal_nan=True)
    invalid = ~valid.unsqueeze(-1).expand_as(X)
    zeros = X[invalid]
    assert torch.all(zeros == 0) and not torch.any(torch.signbit(zeros)), "invalid bins must be +0"


SHAPES = [
    (1, 2, 1),  # smallest: one bin pair, one feature
    (1, 2, 5),  # K=2
    (3, 2, 7),
    (1, 9, 16),  # R=1
    (2, 17, 33),  # D not a multiple of 4/8/16
    (4, 64, 100),
    (3, 300, 50),  # several parallel chunks, rows straddle R boundaries
    (2, 5, 0),  # D=0: only the mask
    (2, 160, 8195),  # > 8 MiB of output: the streaming-store path, rows of every alignment
]


@needs_kernels
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_kernel_matches_reference(shape):
    gW, gb = make_inputs(*shape)
    X, valid = kernel(gW, gb, 1e-8)
    assert_matches_reference(X, valid, gW, gb, 1e-8)
    if shape[1] > 2:
        assert not valid[:, 0].any() and not valid[:, 1].any()  # the planted ties


@needs_kernels
def test_formula_and_eps_rule_exactly():
    gW = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [3.0, 6.0], [0.0, 0.0]]])
    gb = torch.tensor([[2.0, 1.0, 1.0, 0.5]])
    X, valid = bin_solve(gW, gb, eps=0.5)
    assert valid.tolist() == [[True, False, False]]  # |0.5| > 0.5 is False
    assert X.tolist() == [[[-2.0, -4.0], [0.0, 0.0], [0.0, 0.0]]]
    X, valid = bin_solve(gW, gb, eps=0.25)
    assert valid.tolist() == [[True, False, True]]
    assert X.tolist() == [[[-2.0, -4.0], [0.0, 0.0], [6.0, 12.0]]]


@needs_kernels
def test_misaligned_contiguous_input():
    R, K, D = 2, 40, 4096
    gW0, gb = make_inputs(R, K, D)
    gW = torch.empty(R * K * D + 1)[1:].view(R, K, D)  # contiguous, 4 bytes off 16-byte alignment
    gW.copy_(gW0)
    X, valid = kernel(gW, gb)
    assert_matches_reference(X, valid, gW, gb, 1e-8)


@needs_kernels
def test_nonfinite_values():
    gW, gb = make_inputs(2, 8, 12, ties=False)
    gW[0, 3, 5] = float("inf")
    gW[1, 6, 0] = float("nan")
    gb[1, 2] = float("nan")  # NaN difference: not > eps, so invalid and zero
    X, valid = kernel(gW, gb)
    assert not valid[1, 1] and not valid[1, 2]
    assert_matches_reference(X, valid, gW, gb, 1e-8)


@needs_kernels
def test_subnormal_denominator_with_zero_eps():
    # 1/denominator overflows for a subnormal denominator; the kernel divides instead.
    gW = torch.tensor([[[1e-39, 2.0], [0.0, 1.0]]])
    gb = torch.tensor([[2e-39, 0.0]])
    X, valid = kernel(gW, gb, 0.0)
    assert valid.tolist() == [[True]]
    assert_matches_reference(X, valid, gW, gb, 0.0)
    assert torch.isfinite(X[0, 0, 0])


@needs_kernels
def test_eps_is_compared_in_float32_and_inf_eps_invalidates_all():
    gW, gb = make_inputs(2, 6, 3, ties=False)
    for eps in (0.0, 1e-8, 0.3, 1e300, float("inf")):
        X, valid = kernel(gW, gb, eps)
        assert_matches_reference(X, valid, gW, gb, eps)
    assert not valid.any() and torch.count_nonzero(X) == 0


@needs_kernels
def test_wrapper_uses_kernel_and_meta_shapes():
    gW, gb = make_inputs(2, 5, 3)
    X, valid = bin_solve(gW, gb)
    X_k, valid_k = kernel(gW, gb)
    assert torch.equal(X, X_k) and torch.equal(valid, valid_k)
    Xm, vm = kernel(gW.to("meta"), gb.to("meta"), 1e-8)  # shape function for tracing
    assert Xm.shape == (2, 4, 3) and vm.shape == (2, 4) and vm.dtype == torch.bool
    schema = str(torch.ops.flaudit.bin_solve.default._schema)
    assert schema == "flaudit::bin_solve(Tensor gW, Tensor gb, float eps) -> (Tensor X, Tensor valid)"


def test_inputs_requiring_grad_take_the_differentiable_reference():
    gW, gb = make_inputs(2, 5, 3, ties=False)
    gW.requires_grad_()
    gb.requires_grad_()
    X, valid = bin_solve(gW, gb)
    assert X.grad_fn is not None
    X.sum().backward()
    assert gW.grad is not None and gb.grad is not None and torch.isfinite(gb.grad).all()
    with torch.no_grad():
        X_ng, _ = bin_solve(gW, gb)
    assert X_ng.grad_fn is None
    torch.testing.assert_close(X_ng, X.detach(), rtol=4e-7, atol=0.0)


def test_reference_on_other_devices():
    X, valid = bin_solve(torch.empty(3, 7, 5, device="meta"), torch.empty(3, 7, device="meta"))
    assert X.shape == (3, 6, 5) and valid.shape == (3, 6)


# --- bad input: every case raises the same exception type and message on every path ---------

def _f(*shape):
    return torch.zeros(*shape)


BAD = {
    "gW rank": (lambda: (_f(4, 3), _f(4, 3), 1e-8), ValueError, r"gW must be a 3-D tensor \[R, K, D\], got 2-D"),
    "gb rank": (lambda: (_f(2, 4, 3), _f(2, 4, 1), 1e-8), ValueError, r"gb must be a 2-D tensor \[R, K\], got 3-D"),
    "gW dtype": (lambda: (_f(2, 4, 3).double(), _f(2, 4), 1e-8), TypeError, r"gW must be float32, got"),
    "gb dtype": (lambda: (_f(2, 4, 3), _f(2, 4).half(), 1e-8), TypeError, r"gb must be float32, got"),
    "R mismatch": (lambda: (_f(2, 4, 3), _f(3, 4), 1e-8), ValueError, r"same R \(dim 0\), got gW.shape=\[2, 4, 3\] and gb.shape=\[3, 4\]"),
    "K mismatch": (lambda: (_f(2, 4, 3), _f(2, 5), 1e-8), ValueError, r"same K \(dim 1\), got gW.shape=\[2, 4, 3\] and gb.shape=\[2, 5\]"),
    "K < 2": (lambda: (_f(2, 1, 3), _f(2, 1), 1e-8), ValueError, r"K \(gW.shape\[1\]\) must be >= 2 .* got K=1"),
    "gW non-contiguous": (lambda: (_f(2, 3, 4).transpose(1, 2), _f(2, 4), 1e-8), ValueError, r"gW must be contiguous, got strides \[12, 1, 4\]"),
    "gb non-contiguous": (lambda: (_f(2, 4, 3), _f(4, 2).t(), 1e-8), ValueError, r"gb must be contiguous, got strides \[1, 2\]"),
    "device mismatch": (lambda: (_f(2, 4, 3), _f(2, 4).to("meta"), 1e-8), ValueError, r"must be on the same device, got gW on cpu and gb on meta"),
    "negative eps": (lambda: (_f(2, 4, 3), _f(2, 4), -1e-3), ValueError, r"eps must be >= 0, got -0.001"),
    "NaN eps": (lambda: (_f(2, 4, 3), _f(2, 4), float("nan")), ValueError, r"eps must be a non-negative number, got NaN"),
}


@pytest.mark.parametrize("impl", ["kernel", "wrapper", "reference"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_clear_error(case, impl):
    make, exc, pattern = BAD[case]
    gW, gb, eps = make()
    if impl == "kernel":
        if not KERNELS:
            pytest.skip("flaudit._C not built")
        fn = kernel
    else:
        fn = bin_solve if impl == "wrapper" else bin_solve_reference
    with pytest.raises(exc, match="bin_solve: .*" + pattern):
        fn(gW, gb, eps)


@pytest.mark.parametrize("fn", [bin_solve, bin_solve_reference])
def test_non_tensor_and_non_number_arguments(fn):
    with pytest.raises(TypeError, match="gb must be a torch.Tensor, got list"):
        fn(_f(2, 4, 3), [[0.0] * 4] * 2)
    with pytest.raises(TypeError, match="eps must be a real number, got str"):
        fn(_f(2, 4, 3), _f(2, 4), "1e-8")


# --- fallback --------------------------------------------------------------------------------

def test_fallback_to_reference_when_extension_missing(monkeypatch):
    """With flaudit._C unimportable, extension_available() warns once and bin_solve runs the
    reference (the compiled op is never called)."""
    native.extension_available.cache_clear()
    monkeypatch.setitem(sys.modules, "flaudit._C", None)  # makes `import flaudit._C` raise ImportError
    calls = []
    real_reference = bin_solve_mod.bin_solve_reference
    monkeypatch.setattr(bin_solve_mod, "bin_solve_reference", lambda *a: calls.append(a) or real_reference(*a))
    try:
        with pytest.warns(RuntimeWarning, match="compiled kernels are not built"):
            assert native.extension_available() is False
        gW, gb = make_inputs(2, 6, 5)
        X, valid = bin_solve(gW, gb, 1e-8)
        assert len(calls) == 1
        X_ref, valid_ref = real_reference(gW, gb, 1e-8)
        assert torch.equal(X, X_ref) and torch.equal(valid, valid_ref)
        with pytest.raises(ValueError, match="bin_solve: K"):  # same checks on the fallback
            bin_solve(_f(2, 1, 3), _f(2, 1))
    finally:
        monkeypatch.undo()
        native.extension_available.cache_clear()


def test_fallback_for_cuda_tensors_without_cuda_kernels(monkeypatch):
    """An extension built without CUDA kernels must not be asked to run on a CUDA tensor."""
    monkeypatch.setattr(bin_solve_mod, "extension_available", lambda: True)
    fake_cuda_tensor = mock.MagicMock(spec=torch.Tensor)
    fake_cuda_tensor.device = torch.device("cuda", 0)
    fake_cuda_tensor.requires_grad = False
    monkeypatch.setattr(bin_solve_mod, "has_cuda_kernels", lambda: False)
    assert bin_solve_mod._use_kernel(fake_cuda_tensor, fake_cuda_tensor) is False
    monkeypatch.setattr(bin_solve_mod, "has_cuda_kernels", lambda: True)
    assert bin_solve_mod._use_kernel(fake_cuda_tensor, fake_cuda_tensor) is True


# --- CUDA ------------------------------------------------------------------------------------

CUDA_SHAPES = SHAPES + [
    (1, 3, 4096),  # float4 path, one row per block, many D-chunks
    (64, 1100, 3),  # > 65535 rows, several rows per block, scalar path
    (3, 10, 12),  # float4 path with several rows per block
]


@needs_cuda_kernels
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_kernel_matches_reference_and_cpu(shape):
    gW, gb = make_inputs(*shape)
    X, valid = kernel(gW.cuda(), gb.cuda())
    assert_matches_reference(X, valid, gW.cuda(), gb.cuda(), 1e-8)
    if native.extension_available():
        X_cpu, valid_cpu = kernel(gW, gb)
        assert torch.equal(valid.cpu(), valid_cpu)
        torch.testing.assert_close(X.cpu(), X_cpu, rtol=4e-7, atol=0.0, equal_nan=True)


@needs_cuda_kernels
def test_cuda_misaligned_input_takes_scalar_path():
    R, K, D = 2, 9, 256
    gW0, gb = make_inputs(R, K, D, device="cuda")
    gW = torch.empty(R * K * D + 1, device="cuda")[1:].view(R, K, D)
    gW.copy_(gW0)
    X, valid = kernel(gW, gb)
    assert_matches_reference(X, valid, gW, gb, 1e-8)


@needs_cuda_kernels
def test_cuda_wrapper_and_device_errors():
    gW, gb = make_inputs(2, 6, 8, device="cuda")
    X, valid = bin_solve(gW, gb)
    assert X.is_cuda and valid.is_cuda
    assert_matches_reference(X, valid, gW, gb, 1e-8)
    with pytest.raises(ValueError, match="must be on the same device, got gW on cuda:0 and gb on cpu"):
        kernel(gW, gb.cpu())
    with pytest.raises(TypeError, match="gW must be float32"):
        kernel(gW.double(), gb)


@needs_cuda
def test_cuda_reference_runs_on_gpu():
    gW, gb = make_inputs(2, 6, 8, device="cuda")
    X, valid = bin_solve_reference(gW, gb)
    assert X.is_cuda and valid.is_cuda
