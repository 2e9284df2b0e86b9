// Secure-aggregation masking, CUDA kernels (the ops, their math and their checks are those of
// csrc/secagg_mask.cpp; results are bit-identical to the CPU kernels).
//
// One thread per 64-byte ChaCha20 block: it loads its 16 values once (four 128-bit loads),
// keeps the 16 accumulators in registers while it runs the 20 rounds of every mask, and writes
// 16 words once. The keystream is compute-bound (about a thousand integer operations per block
// and mask, rotations being one funnel shift each), so the kernel runs at the integer
// throughput of the GPU; mask keys are uniform across a warp and come from the read-only cache.
// The quantization runs in double precision (one conversion, clamp, multiply and rint per
// value), which --use_fast_math does not touch, so the integers match the CPU's exactly.
#include "chacha20.h"

// c10's CUDA headers only: ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE headers, which a
// bare CUDA toolkit (nvcc + cudart, as on the build machines) does not have.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <tuple>
#include <vector>

namespace flaudit {

// Defined in csrc/secagg_mask.cpp.
void check_chacha20_inputs(const at::Tensor& key, const at::Tensor& nonce, int64_t counter,
                           int64_t n_words);
void check_secagg_mask_inputs(const at::Tensor& update, const at::Tensor& seeds,
                              c10::IntArrayRef signs, double clip_range, double scale);
void check_secagg_unmask_inputs(const at::Tensor& masked, const at::Tensor& seeds,
                                c10::IntArrayRef signs, double scale);

namespace {

using chacha20::kBlockWords;
using chacha20::StreamKey;

constexpr int kThreads = 128;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride beyond this many thread blocks

// The masks as the kernels read them: per mask, 8 key words and a sign (+1 / -1).
struct DeviceMasks {
  const uint32_t* keys;  // [M, 8], the seeds' bytes read as little-endian words
  const int32_t* signs;  // [M]
  int64_t count;
};

__device__ __forceinline__ void add_masks(uint32_t (&acc)[kBlockWords], const DeviceMasks& masks,
                                          const uint32_t nonce[3], uint32_t counter) {
  for (int64_t m = 0; m < masks.count; ++m) {
    StreamKey key;
#pragma unroll
    for (int i = 0; i < 8; ++i) key.key[i] = __ldg(masks.keys + 8 * m + i);
#pragma unroll
    for (int i = 0; i < 3; ++i) key.nonce[i] = nonce[i];
    uint32_t x[kBlockWords];
    chacha20::init_state(x, key, counter);
    chacha20::block(x);
    if (__ldg(masks.signs + m) < 0) {
#pragma unroll
      for (int i = 0; i < kBlockWords; ++i) acc[i] -= x[i];
    } else {
#pragma unroll
      for (int i = 0; i < kBlockWords; ++i) acc[i] += x[i];
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    keystream_kernel(uint32_t* __restrict__ out, int64_t n_words, StreamKey key, uint32_t counter) {
  const int64_t n_blocks = (n_words + kBlockWords - 1) / kBlockWords;
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < n_blocks;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t x[kBlockWords];
    chacha20::init_state(x, key, counter + static_cast<uint32_t>(b));
    chacha20::block(x);
    const int64_t word0 = b * kBlockWords;
#pragma unroll
    for (int i = 0; i < kBlockWords; ++i) {
      if (word0 + i < n_words) out[word0 + i] = x[i];
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    mask_kernel(const float* __restrict__ update, uint32_t* __restrict__ out, int64_t n,
                DeviceMasks masks, double clip, double scale,
                unsigned long long* __restrict__ counts) {
  const uint32_t zero_nonce[3] = {0u, 0u, 0u};
  const int64_t n_blocks = (n + kBlockWords - 1) / kBlockWords;
  const bool vector_io = (reinterpret_cast<uintptr_t>(update) % 16 == 0) &&
                         (reinterpret_cast<uintptr_t>(out) % 16 == 0);
  unsigned long long clipped = 0;
  unsigned long long non_finite = 0;
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < n_blocks;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t word0 = b * kBlockWords;
    const bool full = word0 + kBlockWords <= n;
    float v[kBlockWords];
    if (full && vector_io) {
      const float4* src = reinterpret_cast<const float4*>(update + word0);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float4 f = __ldg(src + q);
        v[4 * q] = f.x;
        v[4 * q + 1] = f.y;
        v[4 * q + 2] = f.z;
        v[4 * q + 3] = f.w;
      }
    } else {
#pragma unroll
      for (int i = 0; i < kBlockWords; ++i) v[i] = word0 + i < n ? __ldg(update + word0 + i) : 0.0f;
    }
    uint32_t acc[kBlockWords];
#pragma unroll
    for (int i = 0; i < kBlockWords; ++i) {
      const bool finite = fabsf(v[i]) <= FLT_MAX;
      const double d = static_cast<double>(v[i]);
      const double c = d < -clip ? -clip : (d > clip ? clip : d);
      clipped += finite && c != d;
      non_finite += !finite;
      const double q = finite ? rint(__dmul_rn(c, scale)) : 0.0;
      acc[i] = static_cast<uint32_t>(static_cast<int32_t>(q));
    }
    add_masks(acc, masks, zero_nonce, static_cast<uint32_t>(b));
    if (full && vector_io) {
      uint4* dst = reinterpret_cast<uint4*>(out + word0);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        dst[q] = make_uint4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kBlockWords; ++i) {
        if (word0 + i < n) out[word0 + i] = acc[i];
      }
    }
  }
  // One atomic per warp and counter.
  for (int offset = 16; offset > 0; offset /= 2) {
    clipped += __shfl_down_sync(0xffffffffu, clipped, offset);
    non_finite += __shfl_down_sync(0xffffffffu, non_finite, offset);
  }
  if ((threadIdx.x & 31) == 0) {
    if (clipped) atomicAdd(counts, clipped);
    if (non_finite) atomicAdd(counts + 1, non_finite);
  }
}

__global__ void __launch_bounds__(kThreads)
    unmask_kernel(const uint32_t* __restrict__ rows, int64_t n_rows, int64_t n,
                  DeviceMasks masks, double scale, uint32_t* __restrict__ sum,
                  float* __restrict__ value) {
  const uint32_t zero_nonce[3] = {0u, 0u, 0u};
  const int64_t n_blocks = (n + kBlockWords - 1) / kBlockWords;
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < n_blocks;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t word0 = b * kBlockWords;
    uint32_t acc[kBlockWords];
#pragma unroll
    for (int i = 0; i < kBlockWords; ++i) acc[i] = 0u;
    for (int64_t k = 0; k < n_rows; ++k) {
      const uint32_t* row = rows + k * n;
#pragma unroll
      for (int i = 0; i < kBlockWords; ++i) {
        if (word0 + i < n) acc[i] += __ldg(row + word0 + i);
      }
    }
    add_masks(acc, masks, zero_nonce, static_cast<uint32_t>(b));
#pragma unroll
    for (int i = 0; i < kBlockWords; ++i) {
      if (word0 + i < n) {
        sum[word0 + i] = acc[i];
        value[word0 + i] = static_cast<float>(
            __dmul_rn(static_cast<double>(static_cast<int32_t>(acc[i])), scale));
      }
    }
  }
}

int grid_for(int64_t n_words) {
  const int64_t n_blocks = (n_words + kBlockWords - 1) / kBlockWords;
  return static_cast<int>(std::clamp<int64_t>((n_blocks + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

// The seeds as key words and the signs, on the device of `like`.
std::tuple<at::Tensor, at::Tensor, DeviceMasks> device_masks(const at::Tensor& seeds,
                                                             c10::IntArrayRef signs,
                                                             const at::Tensor& like) {
  at::Tensor keys = seeds.to(like.device()).contiguous().view(at::kInt);
  std::vector<int32_t> host_signs(signs.begin(), signs.end());
  at::Tensor sign_tensor =
      at::empty({static_cast<int64_t>(host_signs.size())}, seeds.options().dtype(at::kInt).device(at::kCPU));
  std::copy(host_signs.begin(), host_signs.end(), sign_tensor.mutable_data_ptr<int32_t>());
  sign_tensor = sign_tensor.to(like.device());
  DeviceMasks masks{reinterpret_cast<const uint32_t*>(keys.const_data_ptr<int32_t>()),
                    sign_tensor.const_data_ptr<int32_t>(), static_cast<int64_t>(host_signs.size())};
  return {keys, sign_tensor, masks};
}

at::Tensor chacha20_cuda(const at::Tensor& key, const at::Tensor& nonce, int64_t counter,
                         int64_t n_words) {
  check_chacha20_inputs(key, nonce, counter, n_words);
  TORCH_CHECK_VALUE(key.is_cuda(), "chacha20: the CUDA kernel got key on ", key.device());
  const c10::cuda::CUDAGuard guard(key.device());
  const at::Tensor k = key.cpu().contiguous();
  const at::Tensor n = nonce.cpu().contiguous();
  const StreamKey stream_key =
      chacha20::make_stream_key(k.const_data_ptr<uint8_t>(), n.const_data_ptr<uint8_t>());
  at::Tensor out = at::empty({n_words}, key.options().dtype(at::kInt));
  if (n_words == 0) return out;
  keystream_kernel<<<grid_for(n_words), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<uint32_t*>(out.mutable_data_ptr<int32_t>()), n_words, stream_key,
      static_cast<uint32_t>(counter));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> secagg_mask_cuda(const at::Tensor& update,
                                                    const at::Tensor& seeds,
                                                    c10::IntArrayRef signs, double clip_range,
                                                    double scale) {
  check_secagg_mask_inputs(update, seeds, signs, clip_range, scale);
  TORCH_CHECK_VALUE(update.is_cuda(), "secagg_mask: the CUDA kernel got update on ",
                    update.device());
  const c10::cuda::CUDAGuard guard(update.device());
  const int64_t n = update.numel();
  at::Tensor masked = at::empty({n}, update.options().dtype(at::kInt));
  at::Tensor counts = at::zeros({2}, update.options().dtype(at::kLong));
  if (n == 0) return {masked, counts};
  auto [keys, sign_tensor, masks] = device_masks(seeds, signs, update);
  mask_kernel<<<grid_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      update.const_data_ptr<float>(), reinterpret_cast<uint32_t*>(masked.mutable_data_ptr<int32_t>()),
      n, masks, clip_range, scale,
      reinterpret_cast<unsigned long long*>(counts.mutable_data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {masked, counts};
}

std::tuple<at::Tensor, at::Tensor> secagg_unmask_cuda(const at::Tensor& masked,
                                                      const at::Tensor& seeds,
                                                      c10::IntArrayRef signs, double scale) {
  check_secagg_unmask_inputs(masked, seeds, signs, scale);
  TORCH_CHECK_VALUE(masked.is_cuda(), "secagg_unmask: the CUDA kernel got masked on ",
                    masked.device());
  const c10::cuda::CUDAGuard guard(masked.device());
  const int64_t n = masked.size(1);
  at::Tensor sum = at::empty({n}, masked.options());
  at::Tensor value = at::empty({n}, masked.options().dtype(at::kFloat));
  if (n == 0) return {sum, value};
  auto [keys, sign_tensor, masks] = device_masks(seeds, signs, masked);
  unmask_kernel<<<grid_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const uint32_t*>(masked.const_data_ptr<int32_t>()), masked.size(0), n,
      masks, scale, reinterpret_cast<uint32_t*>(sum.mutable_data_ptr<int32_t>()),
      value.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {sum, value};
}

}  // namespace
}  // namespace flaudit

TORCH_LIBRARY_IMPL(flaudit, CUDA, m) {
  m.impl("chacha20", &flaudit::chacha20_cuda);
  m.impl("secagg_mask", &flaudit::secagg_mask_cuda);
  m.impl("secagg_unmask", &flaudit::secagg_unmask_cuda);
}
