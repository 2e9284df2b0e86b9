// Input checks shared by the CPU (.cpp) and CUDA (.cu) kernels of torch.ops.flaudit.*.
//
// Both device kernels call the same function so that a bad input gives the same error, with
// the same message, whichever device it is on. Shape/layout/device/value problems raise
// ValueError (TORCH_CHECK_VALUE), dtype problems TypeError (TORCH_CHECK_TYPE): the pure-torch
// references in auditor/ops/ raise the same Python exception types with the same wording.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>

namespace flaudit {

// bin_solve(gW [R, K, D] float32, gb [R, K] float32, eps >= 0): see csrc/bin_solve.cpp.
inline void check_bin_solve_inputs(const at::Tensor& gW, const at::Tensor& gb, double eps) {
  TORCH_CHECK_VALUE(gW.dim() == 3, "bin_solve: gW must be a 3-D tensor [R, K, D], got ",
                    gW.dim(), "-D tensor of shape ", gW.sizes());
  TORCH_CHECK_VALUE(gb.dim() == 2, "bin_solve: gb must be a 2-D tensor [R, K], got ", gb.dim(),
                    "-D tensor of shape ", gb.sizes());
  TORCH_CHECK_TYPE(gW.scalar_type() == at::kFloat, "bin_solve: gW must be float32, got ",
                   gW.scalar_type());
  TORCH_CHECK_TYPE(gb.scalar_type() == at::kFloat, "bin_solve: gb must be float32, got ",
                   gb.scalar_type());
  TORCH_CHECK_VALUE(gW.size(0) == gb.size(0),
                    "bin_solve: gW and gb must have the same R (dim 0), got gW.shape=",
                    gW.sizes(), " and gb.shape=", gb.sizes());
  TORCH_CHECK_VALUE(gW.size(1) == gb.size(1),
                    "bin_solve: gW and gb must have the same K (dim 1), got gW.shape=",
                    gW.sizes(), " and gb.shape=", gb.sizes());
  TORCH_CHECK_VALUE(gW.size(1) >= 2,
                    "bin_solve: K (gW.shape[1]) must be >= 2 to form consecutive-bin "
                    "differences, got K=",
                    gW.size(1));
  TORCH_CHECK_VALUE(gW.is_contiguous(), "bin_solve: gW must be contiguous, got strides ",
                    gW.strides(), " for shape ", gW.sizes());
  TORCH_CHECK_VALUE(gb.is_contiguous(), "bin_solve: gb must be contiguous, got strides ",
                    gb.strides(), " for shape ", gb.sizes());
  TORCH_CHECK_VALUE(gW.device() == gb.device(),
                    "bin_solve: gW and gb must be on the same device, got gW on ", gW.device(),
                    " and gb on ", gb.device());
  TORCH_CHECK_VALUE(!std::isnan(eps), "bin_solve: eps must be a non-negative number, got NaN");
  TORCH_CHECK_VALUE(eps >= 0.0, "bin_solve: eps must be >= 0, got ", eps);
}

}  // namespace flaudit
