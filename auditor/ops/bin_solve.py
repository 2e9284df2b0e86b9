"""Batched per-bin linear-leakage solve of an imprint layer (``torch.ops.flaudit.bin_solve``).

A binned imprint layer (Robbing the Fed, Scale-MIA) gives bin ``k`` the samples whose
activation passes edge ``k``. The gradients of consecutive bins then differ by exactly the
samples between the two edges, so for R observations (rounds, clients, layers)

    X[r, k] = (gW[r, k] - gW[r, k+1]) / (gb[r, k] - gb[r, k+1])

is the input of the one sample in bin ``k`` when there is one, and ``valid[r, k]`` marks the bins
whose bias difference is large enough to divide by (``|gb[r, k] - gb[r, k+1]| > eps``); ``X`` is
exactly 0 elsewhere. The op is memory-bound: the kernels in csrc/bin_solve.{cpp,cu} read gW once
and write X once; the reference below needs a few more passes.
"""

from __future__ import annotations

import math
import numbers

import torch

from flaudit.core.native import extension_available, has_cuda_kernels

__all__ = ["bin_solve", "bin_solve_reference"]


def bin_solve(gW: torch.Tensor, gb: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin inputs ``X [R, K-1, D]`` and validity mask ``valid [R, K-1]`` from ``gW [R, K, D]``
    and ``gb [R, K]`` (float32, contiguous, same device).

    Runs the compiled kernel for CPU tensors, and for CUDA tensors when the extension has its
    CUDA kernels; otherwise (extension not built, other devices) ``bin_solve_reference``, which
    gives the same values up to rounding (the kernels multiply by a per-bin reciprocal). The
    kernels have no backward, so inputs that require grad (with grad mode on) also take the
    differentiable reference rather than silently losing their gradient.
    Raises ValueError/TypeError on bad input, with the same messages on every path.
    """
    eps = _as_eps(eps)
    if _use_kernel(gW, gb):
        return torch.ops.flaudit.bin_solve(gW, gb, eps)
    return bin_solve_reference(gW, gb, eps)


def bin_solve_reference(
    gW: torch.Tensor, gb: torch.Tensor, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch ``bin_solve``: the parity oracle of the kernels and their fallback.

    Same checks and errors as the kernels (csrc/checks.h). ``eps`` is compared in float32, as the
    kernels do; division is exact here, the kernels multiply by a reciprocal.
    """
    eps = _as_eps(eps)
    _check_inputs(gW, gb, eps)
    dgb = gb[:, :-1] - gb[:, 1:]
    valid = dgb.abs() > eps
    X = torch.sub(gW[:, :-1], gW[:, 1:])
    # Divide by 1 where invalid (no inf/nan produced), then zero those bins.
    X.div_(torch.where(valid, dgb, torch.ones_like(dgb)).unsqueeze(-1))
    X.masked_fill_(~valid.unsqueeze(-1), 0.0)
    return X, valid


def _use_kernel(gW: object, gb: object) -> bool:
    # Non-tensors go to the reference, whose TypeError is clearer than the dispatcher's.
    if not (isinstance(gW, torch.Tensor) and isinstance(gb, torch.Tensor)) or not extension_available():
        return False
    if torch.is_grad_enabled() and (gW.requires_grad or gb.requires_grad):
        return False
    if gW.device.type == "cuda":
        return has_cuda_kernels()
    return gW.device.type == "cpu"


def _as_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"bin_solve: eps must be a real number, got {type(eps).__name__}")
    return float(eps)


def _check_inputs(gW: object, gb: object, eps: float) -> None:
    """Mirror of flaudit::check_bin_solve_inputs (csrc/checks.h), check for check."""
    for name, t in (("gW", gW), ("gb", gb)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"bin_solve: {name} must be a torch.Tensor, got {type(t).__name__}")
    if gW.dim() != 3:
        raise ValueError(
            f"bin_solve: gW must be a 3-D tensor [R, K, D], got {gW.dim()}-D tensor of shape {list(gW.shape)}"
        )
    if gb.dim() != 2:
        raise ValueError(
            f"bin_solve: gb must be a 2-D tensor [R, K], got {gb.dim()}-D tensor of shape {list(gb.shape)}"
        )
    for name, t in (("gW", gW), ("gb", gb)):
        if t.dtype != torch.float32:
            raise TypeError(f"bin_solve: {name} must be float32, got {t.dtype}")
    for dim, what in ((0, "R"), (1, "K")):
        if gW.shape[dim] != gb.shape[dim]:
            raise ValueError(
                f"bin_solve: gW and gb must have the same {what} (dim {dim}), "
                f"got gW.shape={list(gW.shape)} and gb.shape={list(gb.shape)}"
            )
    if gW.shape[1] < 2:
        raise ValueError(
            "bin_solve: K (gW.shape[1]) must be >= 2 to form consecutive-bin differences, "
            f"got K={gW.shape[1]}"
        )
    for name, t in (("gW", gW), ("gb", gb)):
        if not t.is_contiguous():
            raise ValueError(
                f"bin_solve: {name} must be contiguous, got strides {list(t.stride())} for shape {list(t.shape)}"
            )
    if gW.device != gb.device:
        raise ValueError(
            f"bin_solve: gW and gb must be on the same device, got gW on {gW.device} and gb on {gb.device}"
        )
    if math.isnan(eps):
        raise ValueError("bin_solve: eps must be a non-negative number, got NaN")
    if eps < 0:
        raise ValueError(f"bin_solve: eps must be >= 0, got {eps}")
