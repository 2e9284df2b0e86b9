// bin_solve, CUDA kernel (the math and the checks are those of csrc/bin_solve.cpp).
//
// Memory-bound: each output element reads two inputs and writes one, so the kernel is built to
// saturate DRAM bandwidth:
//  * 128-bit (float4) loads and stores when D % 4 == 0 and gW and X are 16-byte aligned, a
//    scalar path otherwise;
//  * a 2-D grid, x over output rows (several rows per block when D is small so that no warp
//    idles), y over chunks of D, with grid-stride loops so that any R*(K-1) and D fit the grid
//    limits;
//  * one correctly rounded reciprocal per row (__frcp_rn, unaffected by --use_fast_math), so
//    the result is bit-identical to the CPU kernel for normal denominators. With fast math,
//    denormals flush to zero: a subnormal denominator counts as 0 here (invalid for any eps).
#include "checks.h"

// c10's CUDA headers only: ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE headers, which a
// bare CUDA toolkit (nvcc + cudart, as on the build machines) does not have.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

namespace flaudit {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridX = (int64_t{1} << 31) - 1;

__device__ __forceinline__ float4 solve4(float4 a, float4 b, float inv) {
  return make_float4((a.x - b.x) * inv, (a.y - b.y) * inv, (a.z - b.z) * inv,
                     (a.w - b.w) * inv);
}

// T is float (scalar path) or float4 (vector path); `units` is D in units of T.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    bin_solve_kernel(const float* __restrict__ W, const float* __restrict__ B,
                     float* __restrict__ X, bool* __restrict__ valid, int64_t rows, int64_t K,
                     int64_t units, float eps) {
  const int64_t unit0 = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t unit_stride = static_cast<int64_t>(gridDim.y) * blockDim.x;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; i < rows;
       i += row_stride) {
    const int64_t r = i / (K - 1);
    const int64_t src = i + r;  // r*K + k, the input row of bin k; bin k+1 follows it
    const float denom = __ldg(B + src) - __ldg(B + src + 1);
    const bool v = fabsf(denom) > eps;
    if (unit0 == 0) valid[i] = v;
    const T* a = reinterpret_cast<const T*>(W) + src * units;
    const T* b = a + units;
    T* out = reinterpret_cast<T*>(X) + i * units;
    if (v) {
      const float inv = __frcp_rn(denom);
      for (int64_t j = unit0; j < units; j += unit_stride) {
        if constexpr (sizeof(T) == sizeof(float4)) {
          out[j] = solve4(__ldg(a + j), __ldg(b + j), inv);
        } else {
          out[j] = (__ldg(a + j) - __ldg(b + j)) * inv;
        }
      }
    } else {
      T zero{};
      for (int64_t j = unit0; j < units; j += unit_stride) out[j] = zero;
    }
  }
}

template <typename T>
void launch(const float* W, const float* B, float* X, bool* valid, int64_t rows, int64_t K,
            int64_t units, float eps, cudaStream_t stream) {
  // Threads along D: the smallest power of two >= units, between one warp and a block;
  // the rest of the block takes more rows.
  int tx = 32;
  while (tx < kThreads && tx < units) tx *= 2;
  const int ty = kThreads / tx;
  const int64_t gy = std::clamp<int64_t>((units + tx - 1) / tx, 1, kMaxGridY);
  const int64_t gx = std::clamp<int64_t>((rows + ty - 1) / ty, 1, kMaxGridX);
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  const dim3 block(tx, ty);
  bin_solve_kernel<T><<<grid, block, 0, stream>>>(W, B, X, valid, rows, K, units, eps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> bin_solve_cuda(const at::Tensor& gW, const at::Tensor& gb,
                                                  double eps) {
  check_bin_solve_inputs(gW, gb, eps);
  TORCH_CHECK_VALUE(gW.device().is_cuda(), "bin_solve: the CUDA kernel got gW on ", gW.device());
  const c10::cuda::CUDAGuard guard(gW.device());

  const int64_t R = gW.size(0);
  const int64_t K = gW.size(1);
  const int64_t D = gW.size(2);
  at::Tensor X = at::empty({R, K - 1, D}, gW.options());
  at::Tensor valid = at::empty({R, K - 1}, gW.options().dtype(at::kBool));
  const int64_t rows = R * (K - 1);
  if (rows == 0) return {X, valid};

  const float* W = gW.const_data_ptr<float>();
  const float* B = gb.const_data_ptr<float>();
  float* out = X.mutable_data_ptr<float>();
  bool* ok = valid.mutable_data_ptr<bool>();
  // Compare in float32, as torch does for `float_tensor.abs() > python_float`.
  const float eps_f = static_cast<float>(eps);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const bool vec4 = D % 4 == 0 && reinterpret_cast<uintptr_t>(W) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(out) % 16 == 0;
  if (vec4) {
    launch<float4>(W, B, out, ok, rows, K, D / 4, eps_f, stream);
  } else {
    launch<float>(W, B, out, ok, rows, K, D, eps_f, stream);
  }
  return {X, valid};
}

}  // namespace
}  // namespace flaudit

TORCH_LIBRARY_IMPL(flaudit, CUDA, m) { m.impl("bin_solve", &flaudit::bin_solve_cuda); }
