// bin_solve, CPU kernel: the batched per-bin linear-leakage solve of an imprint layer.
//
// For R independent observations of a binned imprint layer's gradients, gW [R, K, D] and
// gb [R, K], consecutive bins differ by exactly the samples whose activation falls between
// their edges, so
//     X[r, k] = (gW[r, k] - gW[r, k+1]) / (gb[r, k] - gb[r, k+1])
// recovers the input when one sample sits in bin k. valid[r, k] = |gb[r, k] - gb[r, k+1]| > eps
// marks bins with a usable denominator; X is exactly 0 elsewhere.
//
// The op is memory-bound (one read of gW, one write of X), so the kernel is shaped for that:
//  * parallel_for over the R*(K-1) output rows in contiguous chunks, so the second input row of
//    output row i is the first input row of i+1 and is still in L1/L2: gW is read from memory
//    once, not twice;
//  * one reciprocal per row, a multiply per element in a plain vectorizable loop (a subnormal
//    denominator, whose reciprocal overflows, divides instead, as the torch reference does);
//  * for outputs larger than a share of the cache, non-temporal (streaming) stores on x86,
//    which skip the read-for-ownership of each destination line (a third less traffic);
//  * for outputs of 32 MiB and more, transparent huge pages on the fresh output, since its
//    first-touch page faults otherwise cost more than all the memory traffic (see
//    advise_huge_pages).
#include "checks.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__SSE2__)
#include <immintrin.h>
#define FLAUDIT_HAVE_STREAM_STORES 1
#endif

namespace flaudit {
namespace {

// Outputs at least this large bypass the cache on their way to memory (streaming stores).
// Below it, X is likely to be read back soon and fits in a share of the LLC, so it is better
// left cached.
constexpr int64_t kStreamMinBytes = int64_t{8} << 20;

// Work per parallel_for task, in elements of X; smaller tasks cost more in scheduling than
// they gain in balance.
constexpr int64_t kGrainElems = int64_t{1} << 15;

// A fresh output of this size comes straight from mmap (glibc mmaps every allocation of 32 MiB or
// more), and first-touch page faults, one per 4 KiB page, then cost more than the kernel's
// memory traffic (about 3x more on the 2-core build machines). Asking for transparent huge
// pages on it makes that one fault per 2 MiB. This is the same advice torch's own CPU allocator
// gives under THP_MEM_ALLOC_ENABLE=1, applied to this op's output only; it is advisory (no
// effect when THP is "never", redundant when "always") and leaves the memory torch's to free.
constexpr int64_t kHugePageMinBytes = int64_t{32} << 20;

void advise_huge_pages(void* data, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (nbytes < kHugePageMinBytes) return;
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + nbytes) & ~(kHuge - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)nbytes;
#endif
}

inline void solve_row(const float* __restrict__ a, const float* __restrict__ b,
                      float* __restrict__ out, int64_t D, float inv) {
  for (int64_t d = 0; d < D; ++d) out[d] = (a[d] - b[d]) * inv;
}

inline void solve_row_div(const float* __restrict__ a, const float* __restrict__ b,
                          float* __restrict__ out, int64_t D, float denom) {
  for (int64_t d = 0; d < D; ++d) out[d] = (a[d] - b[d]) / denom;
}

#ifdef FLAUDIT_HAVE_STREAM_STORES
// Same as solve_row (inv finite) or a zero fill (zero == true), with 16-byte streaming stores
// for the aligned body of the row. The caller issues the store fence.
inline void solve_row_stream(const float* __restrict__ a, const float* __restrict__ b,
                             float* __restrict__ out, int64_t D, float inv, bool zero) {
  int64_t head = static_cast<int64_t>((16 - (reinterpret_cast<uintptr_t>(out) & 15)) & 15) / 4;
  head = std::min(head, D);
  int64_t d = 0;
  if (zero) {
    for (; d < head; ++d) out[d] = 0.0f;
    const __m128 z = _mm_setzero_ps();
    for (; d + 4 <= D; d += 4) _mm_stream_ps(out + d, z);
    for (; d < D; ++d) out[d] = 0.0f;
    return;
  }
  for (; d < head; ++d) out[d] = (a[d] - b[d]) * inv;
  const __m128 vinv = _mm_set1_ps(inv);
  for (; d + 8 <= D; d += 8) {
    const __m128 x0 = _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(a + d), _mm_loadu_ps(b + d)), vinv);
    const __m128 x1 =
        _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(a + d + 4), _mm_loadu_ps(b + d + 4)), vinv);
    _mm_stream_ps(out + d, x0);
    _mm_stream_ps(out + d + 4, x1);
  }
  for (; d + 4 <= D; d += 4) {
    _mm_stream_ps(out + d, _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(a + d), _mm_loadu_ps(b + d)), vinv));
  }
  for (; d < D; ++d) out[d] = (a[d] - b[d]) * inv;
}
#endif

std::tuple<at::Tensor, at::Tensor> bin_solve_cpu(const at::Tensor& gW, const at::Tensor& gb,
                                                 double eps) {
  check_bin_solve_inputs(gW, gb, eps);
  TORCH_CHECK_VALUE(gW.device().is_cpu(), "bin_solve: the CPU kernel got gW on ", gW.device());

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
  advise_huge_pages(out, X.numel() * static_cast<int64_t>(sizeof(float)));
  // Compare in float32, as torch does for `float_tensor.abs() > python_float`.
  const float eps_f = static_cast<float>(eps);
#ifdef FLAUDIT_HAVE_STREAM_STORES
  const bool stream = X.numel() * static_cast<int64_t>(sizeof(float)) >= kStreamMinBytes;
#else
  const bool stream = false;
#endif
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(D, 1));

  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / (K - 1);
      const int64_t k = i - r * (K - 1);
      const int64_t src = r * K + k;  // input row of bin k; bin k+1 follows it
      const float denom = B[src] - B[src + 1];
      const bool v = std::fabs(denom) > eps_f;
      ok[i] = v;
      const float* a = W + src * D;
      const float* b = a + D;
      float* o = out + i * D;
      const float inv = v ? 1.0f / denom : 0.0f;
      if (v && !std::isfinite(inv)) {  // |denom| below FLT_MIN: 1/denom overflows
        solve_row_div(a, b, o, D, denom);
        continue;
      }
#ifdef FLAUDIT_HAVE_STREAM_STORES
      if (stream) {
        solve_row_stream(a, b, o, D, inv, !v);
        continue;
      }
#endif
      if (v) {
        solve_row(a, b, o, D, inv);
      } else {
        std::fill(o, o + D, 0.0f);
      }
    }
#ifdef FLAUDIT_HAVE_STREAM_STORES
    // Streaming stores are weakly ordered: make them visible before this task is joined.
    if (stream) _mm_sfence();
#endif
  });
  return {X, valid};
}

// Shapes only (meta tensors, FakeTensor/torch.compile tracing): same checks, no data.
std::tuple<at::Tensor, at::Tensor> bin_solve_meta(const at::Tensor& gW, const at::Tensor& gb,
                                                  double eps) {
  check_bin_solve_inputs(gW, gb, eps);
  const int64_t R = gW.size(0);
  const int64_t K = gW.size(1);
  return {at::empty({R, K - 1, gW.size(2)}, gW.options()),
          at::empty({R, K - 1}, gW.options().dtype(at::kBool))};
}

}  // namespace
}  // namespace flaudit

TORCH_LIBRARY_IMPL(flaudit, CPU, m) { m.impl("bin_solve", &flaudit::bin_solve_cpu); }
TORCH_LIBRARY_IMPL(flaudit, Meta, m) { m.impl("bin_solve", &flaudit::bin_solve_meta); }
