// imprint_forward / imprint_backward, CUDA kernels (math, schemas and checks: imprint_forward.cpp).
//
// Forward: one block per (sample, query) reduces h = <x_i, query_q> over D (the only O(D) work),
// then an elementwise kernel writes the B*K bin activations from h. Backward: an elementwise
// kernel forms grad_pre; small reductions give grad_bias/grad_scale (one thread per bin, a loop
// over the batch: B is small and reads coalesce across bins) and grad_h (one block per
// (sample, query), a reduction over the query's bins); grad_x and grad_query are outer products
// with Q (usually 1) terms. Everything is O(B*(Q*D + K)), as on the CPU.
//
// Derivatives at the kinks follow torch (ReLU: pre > 0; hardtanh: 0 < pre < 1). pre is formed
// with __fmaf_rn in the forward and the backward alike, so they agree bit for bit.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <tuple>

namespace flaudit {

// Defined in imprint_forward.cpp.
void check_imprint_inputs(const char* op, const at::Tensor& x, const at::Tensor& query,
                          const at::Tensor& scale, const at::Tensor& bias, int64_t activation);
void check_imprint_backward_inputs(const at::Tensor& grad_out, const at::Tensor& x,
                                   const at::Tensor& query, const at::Tensor& scale,
                                   const at::Tensor& bias, const at::Tensor& h,
                                   int64_t activation);

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

__device__ __forceinline__ float activate(float pre, int activation) {
  if (activation == 1) return pre > 0.0f ? pre : 0.0f;
  if (activation == 2) return fminf(fmaxf(pre, 0.0f), 1.0f);
  return pre;
}

__device__ __forceinline__ bool passes(float pre, int activation) {
  if (activation == 1) return pre > 0.0f;
  if (activation == 2) return pre > 0.0f && pre < 1.0f;
  return true;
}

// Sum of `v` over the block (blockDim.x == kThreads); the result is valid in thread 0.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0f;
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// h[i, q] = <x_i, query_q>: grid (Q, B), one block each.
__global__ void __launch_bounds__(kThreads)
    query_kernel(const float* __restrict__ X, const float* __restrict__ W, float* __restrict__ H,
                 int64_t D, int64_t Q) {
  const int64_t q = blockIdx.x, i = blockIdx.y;
  const float* x = X + i * D;
  const float* w = W + q * D;
  float acc = 0.0f;
  for (int64_t d = threadIdx.x; d < D; d += kThreads) acc = __fmaf_rn(__ldg(x + d), __ldg(w + d), acc);
  acc = block_sum(acc);
  if (threadIdx.x == 0) H[i * Q + q] = acc;
}

__global__ void __launch_bounds__(kThreads)
    bins_kernel(const float* __restrict__ H, const float* __restrict__ S,
                const float* __restrict__ C, float* __restrict__ O, int64_t B, int64_t K,
                int64_t Q, int activation) {
  const int64_t G = K / Q;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; j < B * K;
       j += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = j / K, k = j - i * K;
    O[j] = activate(__fmaf_rn(S[k], H[i * Q + k / G], C[k]), activation);
  }
}

__global__ void __launch_bounds__(kThreads)
    grad_pre_kernel(const float* __restrict__ GO, const float* __restrict__ H,
                    const float* __restrict__ S, const float* __restrict__ C,
                    float* __restrict__ GP, int64_t B, int64_t K, int64_t Q, int activation) {
  const int64_t G = K / Q;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; j < B * K;
       j += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = j / K, k = j - i * K;
    const float pre = __fmaf_rn(S[k], H[i * Q + k / G], C[k]);
    GP[j] = passes(pre, activation) ? GO[j] : 0.0f;
  }
}

// grad_h[i, q] = sum over the bins k of query q of grad_pre[i, k] * scale[k]: grid (Q, B).
__global__ void __launch_bounds__(kThreads)
    grad_h_kernel(const float* __restrict__ GP, const float* __restrict__ S,
                  float* __restrict__ GH, int64_t K, int64_t Q) {
  const int64_t q = blockIdx.x, i = blockIdx.y, G = K / Q;
  float acc = 0.0f;
  for (int64_t k = q * G + threadIdx.x; k < (q + 1) * G; k += kThreads) {
    acc = __fmaf_rn(GP[i * K + k], S[k], acc);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) GH[i * Q + q] = acc;
}

// grad_scale[k] = sum_i grad_pre[i, k] * h[i, g(k)], grad_bias[k] = sum_i grad_pre[i, k].
__global__ void __launch_bounds__(kThreads)
    column_sums_kernel(const float* __restrict__ GP, const float* __restrict__ H,
                       float* __restrict__ GS, float* __restrict__ GB, int64_t B, int64_t K,
                       int64_t Q) {
  const int64_t G = K / Q;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; k < K;
       k += static_cast<int64_t>(gridDim.x) * kThreads) {
    float s = 0.0f, b = 0.0f;
    for (int64_t i = 0; i < B; ++i) {
      const float g = GP[i * K + k];
      s = __fmaf_rn(g, H[i * Q + k / G], s);
      b += g;
    }
    if (GS != nullptr) GS[k] = s;
    if (GB != nullptr) GB[k] = b;
  }
}

// out[r, d] = sum_j coef[r, j] * rows[j, d] for j < J, where coef[r, j] = A[r * sr + j * sj]:
// grad_x (r = sample, j = query: coef = grad_h) and grad_query (r = query, j = sample:
// coef = grad_h^T, rows = x).
__global__ void __launch_bounds__(kThreads)
    outer_kernel(const float* __restrict__ A, int64_t sr, int64_t sj,
                 const float* __restrict__ rows, float* __restrict__ out, int64_t R, int64_t J,
                 int64_t D) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; e < R * D;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t r = e / D, d = e - r * D;
    float acc = 0.0f;
    for (int64_t j = 0; j < J; ++j) acc = __fmaf_rn(A[r * sr + j * sj], rows[j * D + d], acc);
    out[e] = acc;
  }
}

std::tuple<at::Tensor, at::Tensor> imprint_forward_cuda(const at::Tensor& x,
                                                        const at::Tensor& query,
                                                        const at::Tensor& scale,
                                                        const at::Tensor& bias,
                                                        int64_t activation) {
  check_imprint_inputs("imprint_forward", x, query, scale, bias, activation);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), D = x.size(1), Q = query.size(0), K = scale.size(0);
  at::Tensor out = at::empty({B, K}, x.options());
  at::Tensor h = at::empty({B, Q}, x.options());
  if (B == 0) return {out, h};
  TORCH_CHECK_VALUE(B <= 65535, "imprint_forward: the CUDA kernel takes at most 65535 samples, got B=", B);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  query_kernel<<<dim3(static_cast<unsigned>(Q), static_cast<unsigned>(B)), kThreads, 0, stream>>>(
      x.const_data_ptr<float>(), query.const_data_ptr<float>(), h.mutable_data_ptr<float>(), D, Q);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (K > 0) {
    bins_kernel<<<blocks_for(B * K), kThreads, 0, stream>>>(
        h.const_data_ptr<float>(), scale.const_data_ptr<float>(), bias.const_data_ptr<float>(),
        out.mutable_data_ptr<float>(), B, K, Q, static_cast<int>(activation));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {out, h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> imprint_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& query,
    const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& h, int64_t activation,
    std::array<bool, 4> output_mask) {
  check_imprint_backward_inputs(grad_out, x, query, scale, bias, h, activation);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), D = x.size(1), Q = query.size(0), K = scale.size(0);
  TORCH_CHECK_VALUE(B <= 65535, "imprint_backward: the CUDA kernel takes at most 65535 samples, got B=", B);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  at::Tensor grad_pre = at::empty({B, K}, x.options());
  at::Tensor grad_h = at::zeros({B, Q}, x.options());
  if (B > 0 && K > 0) {
    grad_pre_kernel<<<blocks_for(B * K), kThreads, 0, stream>>>(
        grad_out.const_data_ptr<float>(), h.const_data_ptr<float>(),
        scale.const_data_ptr<float>(), bias.const_data_ptr<float>(),
        grad_pre.mutable_data_ptr<float>(), B, K, Q, static_cast<int>(activation));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_h_kernel<<<dim3(static_cast<unsigned>(Q), static_cast<unsigned>(B)), kThreads, 0, stream>>>(
        grad_pre.const_data_ptr<float>(), scale.const_data_ptr<float>(),
        grad_h.mutable_data_ptr<float>(), K, Q);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  at::Tensor grad_x, grad_query, grad_scale, grad_bias;
  if (output_mask[2]) grad_scale = at::empty({K}, x.options());
  if (output_mask[3]) grad_bias = at::empty({K}, x.options());
  if ((output_mask[2] || output_mask[3]) && K > 0) {
    column_sums_kernel<<<blocks_for(K), kThreads, 0, stream>>>(
        grad_pre.const_data_ptr<float>(), h.const_data_ptr<float>(),
        output_mask[2] ? grad_scale.mutable_data_ptr<float>() : nullptr,
        output_mask[3] ? grad_bias.mutable_data_ptr<float>() : nullptr, B, K, Q);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (output_mask[0]) {
    grad_x = at::empty({B, D}, x.options());
    if (B * D > 0) {
      outer_kernel<<<blocks_for(B * D), kThreads, 0, stream>>>(
          grad_h.const_data_ptr<float>(), Q, 1, query.const_data_ptr<float>(),
          grad_x.mutable_data_ptr<float>(), B, Q, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  if (output_mask[1]) {
    grad_query = at::empty({Q, D}, x.options());
    if (Q * D > 0) {
      outer_kernel<<<blocks_for(Q * D), kThreads, 0, stream>>>(
          grad_h.const_data_ptr<float>(), 1, Q, x.const_data_ptr<float>(),
          grad_query.mutable_data_ptr<float>(), Q, B, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  return {grad_x, grad_query, grad_scale, grad_bias, grad_pre};
}

}  // namespace
}  // namespace flaudit

TORCH_LIBRARY_IMPL(flaudit, CUDA, m) {
  m.impl("imprint_forward", &flaudit::imprint_forward_cuda);
  m.impl("imprint_backward", &flaudit::imprint_backward_cuda);
}
