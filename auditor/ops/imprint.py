"""The binned imprint layer (``torch.ops.flaudit.imprint_forward`` and its backward).

A crafted imprint layer (Robbing the Fed, Scale-MIA) has K rows that share Q query vectors:
row k is ``scale[k] * query[k // (K // Q)]``. It is the dense layer

    act(x @ (scale[:, None] * query.repeat_interleave(K // Q, 0) + weight).T + bias)

with ``weight`` the trainable per-bin correction, which is zero when the server sends the layer.
While it is zero, the kernels compute each sample's Q query values once and the K bin
activations from them, O(B*(Q*D + K)) instead of the dense O(B*K*D), and the backward gives the
dense layer's gradients for x, query, scale and bias in the same order of work. The dense weight
gradient ``grad_pre.T @ x`` (what a client training the rows uploads, and what the attacker
reads) is formed here from the kernel's ``grad_pre``: as a sparse scatter when few entries are
non-zero (the sparse hardtanh variant: one bin per sample), else one matmul.

``activation``: "identity", "relu" (cumulative bins) or "hardtanh" (clamp to [0, 1]: sparse
bins, a ramp across one interval).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flaudit.core.native import extension_available, has_cuda_kernels

__all__ = ["ACTIVATIONS", "activate", "imprint_forward", "imprint_forward_reference"]

ACTIVATIONS = {"identity": 0, "relu": 1, "hardtanh": 2}
_TORCH_ACTIVATIONS = {
    "identity": lambda t: t,
    "relu": F.relu,
    "hardtanh": lambda t: F.hardtanh(t, 0.0, 1.0),
}
SPARSE_SCATTER_DENSITY = 1 / 16  # below this share of non-zero grad_pre, scatter beats a matmul


def activate(pre: torch.Tensor, activation: str) -> torch.Tensor:
    """The layer's activation on pre-activations computed elsewhere (torch ops, autograd)."""
    _activation_code(activation)
    return _TORCH_ACTIVATIONS[activation](pre)


def imprint_forward(
    x: torch.Tensor,
    query: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    activation: str = "relu",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bin activations ``[B, K]`` of the imprint layer for inputs ``x [B, D]``, differentiable
    in every tensor argument.

    ``query [Q, D]``, ``scale [K]`` and ``bias [K]`` (K a multiple of Q) define the shared-query
    rows; ``weight [K, D]`` (optional) is the trainable dense correction. The compiled kernels
    run for float32 CPU tensors (and CUDA tensors when built with CUDA) while ``weight`` is
    absent or all zero; otherwise the dense ``imprint_forward_reference`` runs. Raises
    ValueError/TypeError on bad input, with the same messages on every path.
    """
    code = _activation_code(activation)
    _check_weight(weight, x, query, scale)
    if _use_kernel(x, query, scale, bias, weight):
        return _ImprintFunction.apply(x, query, scale, bias, weight, code)
    return imprint_forward_reference(x, query, scale, bias, activation, weight)


def imprint_forward_reference(
    x: torch.Tensor,
    query: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    activation: str = "relu",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The dense layer itself (materialised rows, one matmul): the kernels' parity oracle and
    their fallback. Same checks and errors as the kernels."""
    _check_inputs("imprint_forward", x, query, scale, bias, _activation_code(activation))
    _check_weight(weight, x, query, scale)
    rows = scale[:, None] * query.repeat_interleave(scale.shape[0] // query.shape[0], 0)
    if weight is not None:
        rows = rows + weight
    return activate(F.linear(x, rows, bias), activation)


class _ImprintFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, query, scale, bias, weight, code):
        out, h = torch.ops.flaudit.imprint_forward(x, query, scale, bias, code)
        ctx.save_for_backward(x, query, scale, bias, h)
        ctx.code = code
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, query, scale, bias, h = ctx.saved_tensors
        wants = ctx.needs_input_grad
        grad_x, grad_query, grad_scale, grad_bias, grad_pre = torch.ops.flaudit.imprint_backward(
            grad_out.contiguous(), x, query, scale, bias, h, ctx.code, list(wants[:4])
        )
        grad_weight = _dense_weight_grad(grad_pre, x) if wants[4] else None
        return grad_x, grad_query, grad_scale, grad_bias, grad_weight, None


def _dense_weight_grad(grad_pre: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``grad_pre.T @ x`` [K, D]: a scatter of the few non-zero entries, or one matmul."""
    rows, cols = grad_pre.nonzero(as_tuple=True)
    if rows.numel() > SPARSE_SCATTER_DENSITY * grad_pre.numel():
        return grad_pre.t().mm(x)
    grad = torch.zeros(grad_pre.shape[1], x.shape[1], dtype=x.dtype, device=x.device)
    return grad.index_add_(0, cols, x[rows] * grad_pre[rows, cols, None])


def _use_kernel(x, query, scale, bias, weight) -> bool:
    tensors = (x, query, scale, bias)
    if not all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in tensors):
        return False  # the reference raises the clearer error
    if not extension_available():
        return False
    if weight is not None and bool(weight.detach().any()):
        return False  # trained rows no longer share the query: the dense layer is exact
    if x.device.type == "cuda":
        return has_cuda_kernels()
    return x.device.type == "cpu"


def _activation_code(activation: object) -> int:
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"imprint_forward: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
        )
    return ACTIVATIONS[activation]


def _check_weight(weight, x, query, scale) -> None:
    if weight is None:
        return
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"imprint_forward: weight must be a torch.Tensor or None, got {type(weight).__name__}")
    K, D = _dim(scale, 0), _dim(x, 1)
    if tuple(weight.shape) != (K, D):
        raise ValueError(f"imprint_forward: weight must have shape [K, D] = [{K}, {D}], got {list(weight.shape)}")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(
            f"imprint_forward: weight must match x in dtype and device, got {weight.dtype} on "
            f"{weight.device} and {x.dtype} on {x.device}"
        )


def _dim(t: object, i: int) -> int:
    return t.shape[i] if isinstance(t, torch.Tensor) and t.dim() > i else -1


def _check_inputs(op: str, x, query, scale, bias, activation: int) -> None:
    """Mirror of flaudit::check_imprint_inputs (csrc/imprint_forward.cpp), check for check."""
    named = (("x", x), ("query", query), ("scale", scale), ("bias", bias))
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t, rank, dims in (("x", x, 2, "[B, D]"), ("query", query, 2, "[Q, D]"),
                                ("scale", scale, 1, "[K]"), ("bias", bias, 1, "[K]")):
        if t.dim() != rank:
            raise ValueError(f"{op}: {name} must be a {rank}-D tensor {dims}, got {t.dim()}-D tensor of shape {list(t.shape)}")
    for name, t in named:
        if t.dtype != torch.float32:
            raise TypeError(f"{op}: {name} must be float32, got {t.dtype}")
    if query.shape[1] != x.shape[1]:
        raise ValueError(
            f"{op}: query and x must have the same D (dim 1), got query.shape={list(query.shape)} and x.shape={list(x.shape)}"
        )
    if query.shape[0] < 1:
        raise ValueError(f"{op}: query must hold at least one vector, got Q=0")
    if bias.shape[0] != scale.shape[0]:
        raise ValueError(
            f"{op}: scale and bias must have the same K, got scale.shape={list(scale.shape)} and bias.shape={list(bias.shape)}"
        )
    if scale.shape[0] % query.shape[0]:
        raise ValueError(f"{op}: K ({scale.shape[0]}) must be a multiple of the number of queries Q ({query.shape[0]})")
    for name, t in named:
        if not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous, got strides {list(t.stride())} for shape {list(t.shape)}")
    for name, t in named:
        if t.device != x.device:
            raise ValueError(f"{op}: all inputs must be on the same device, got x on {x.device} and {name} on {t.device}")
