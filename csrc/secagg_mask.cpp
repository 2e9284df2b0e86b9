// Secure-aggregation masking, CPU kernels: ChaCha20 keystreams fused with fixed-point
// quantization and addition modulo 2^32.
//
//   chacha20(key u8[32], nonce u8[12], counter, n_words) -> int32[n_words]
//       the raw RFC 8439 keystream from block `counter` on, as little-endian 32-bit words.
//   secagg_mask(update f32[N], seeds u8[M, 32], signs int[M], clip_range, scale)
//       -> (masked int32[N], counts int64[2])
//       masked[i] = rint(clamp(update[i], -clip_range, clip_range) * scale)
//                   + sum_m signs[m] * PRG(seeds[m])[i]   (mod 2^32),
//       counts = (values clipped, non-finite values); a non-finite value quantizes to 0.
//   secagg_unmask(masked int32[K, N], seeds u8[M, 32], signs int[M], scale)
//       -> (sum int32[N], value f32[N])
//       sum[i] = sum_k masked[k][i] + sum_m signs[m] * PRG(seeds[m])[i]   (mod 2^32),
//       value[i] = float(int32(sum[i]) * scale).
// PRG(seed) is the ChaCha20 keystream with key = seed, the all-zero nonce and counter 0.
// Quantization and dequantization run in double precision, so the CPU and CUDA kernels and the
// numpy reference (defenses/secagg/masking.py) give bit-identical integers.
//
// Speed: the keystream is the whole cost (20 rounds per 64 bytes and mask), so the kernel
//  * runs L blocks at once, one per SIMD lane (GCC vector types: 16 lanes with AVX-512, 8 with
//    AVX2, 4 with SSE2, picked at run time from the CPU's features);
//  * keeps the accumulator of a group of L blocks in that lane-major layout while every mask is
//    added, so the words are transposed twice per group, not twice per mask;
//  * broadcasts each mask's initial state to the lanes once per chunk, not once per group, so
//    that the rounds are nearly all the work (a third faster than setting up each group);
//  * reads the update and writes the result once (the quantization is the group's load), in
//    parallel over 64 KiB chunks handed out dynamically;
//  * asks for transparent huge pages for large outputs before writing them: on a VM, faulting
//    in 45 MB of fresh 4 KiB pages costs as much as expanding two masks.
// Vector types wider than the baseline ISA only ever live inside always-inline functions that
// are inlined into functions compiled for that ISA; the ABI note GCC prints for them is moot.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "chacha20.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

namespace flaudit {

// ---- input checks (also called by the CUDA kernels in csrc/secagg_mask.cu) -----------------
// Shape/layout/value problems raise ValueError, dtype problems TypeError, with the wording of
// the Python wrappers' checks in defenses/secagg/masking.py.

constexpr int64_t kMaxStreamWords = int64_t{1} << 36;  // 2^32 blocks of 16 words
constexpr double kMaxQuantized = 2147483647.0;         // 2^31 - 1

void check_chacha20_inputs(const at::Tensor& key, const at::Tensor& nonce, int64_t counter,
                           int64_t n_words) {
  TORCH_CHECK_TYPE(key.scalar_type() == at::kByte, "chacha20: key must be uint8, got ",
                   key.scalar_type());
  TORCH_CHECK_TYPE(nonce.scalar_type() == at::kByte, "chacha20: nonce must be uint8, got ",
                   nonce.scalar_type());
  TORCH_CHECK_VALUE(key.dim() == 1 && key.numel() == 32,
                    "chacha20: key must hold 32 bytes (shape [32]), got shape ", key.sizes());
  TORCH_CHECK_VALUE(nonce.dim() == 1 && nonce.numel() == 12,
                    "chacha20: nonce must hold 12 bytes (shape [12]), got shape ", nonce.sizes());
  TORCH_CHECK_VALUE(key.device() == nonce.device(),
                    "chacha20: key and nonce must be on the same device, got key on ",
                    key.device(), " and nonce on ", nonce.device());
  TORCH_CHECK_VALUE(counter >= 0 && counter <= 0xffffffffLL,
                    "chacha20: counter must be in [0, 2**32 - 1], got ", counter);
  TORCH_CHECK_VALUE(n_words >= 0, "chacha20: n_words must be >= 0, got ", n_words);
  TORCH_CHECK_VALUE(counter + (n_words + 15) / 16 <= (int64_t{1} << 32),
                    "chacha20: the 32-bit block counter would overflow: counter + "
                    "ceil(n_words / 16) must be <= 2**32, got counter=",
                    counter, " and n_words=", n_words);
}

static void check_seeds_and_signs(const char* op, const at::Tensor& seeds,
                                  c10::IntArrayRef signs) {
  TORCH_CHECK_TYPE(seeds.scalar_type() == at::kByte, op, ": seeds must be uint8, got ",
                   seeds.scalar_type());
  TORCH_CHECK_VALUE(seeds.dim() == 2 && seeds.size(1) == 32, op,
                    ": seeds must have shape [M, 32] (one 32-byte seed per row), got shape ",
                    seeds.sizes());
  TORCH_CHECK_VALUE(seeds.is_contiguous(), op, ": seeds must be contiguous");
  TORCH_CHECK_VALUE(static_cast<int64_t>(signs.size()) == seeds.size(0), op,
                    ": signs must have one entry per seed, got ", signs.size(), " signs for ",
                    seeds.size(0), " seeds");
  for (size_t m = 0; m < signs.size(); ++m) {
    TORCH_CHECK_VALUE(signs[m] == 1 || signs[m] == -1, op, ": signs must be +1 or -1, got ",
                      signs[m], " at position ", m);
  }
}

void check_secagg_mask_inputs(const at::Tensor& update, const at::Tensor& seeds,
                              c10::IntArrayRef signs, double clip_range, double scale) {
  TORCH_CHECK_TYPE(update.scalar_type() == at::kFloat, "secagg_mask: update must be float32, got ",
                   update.scalar_type());
  TORCH_CHECK_VALUE(update.dim() == 1, "secagg_mask: update must be a 1-D tensor, got shape ",
                    update.sizes());
  TORCH_CHECK_VALUE(update.is_contiguous(), "secagg_mask: update must be contiguous");
  TORCH_CHECK_VALUE(update.numel() < kMaxStreamWords,
                    "secagg_mask: update has more than 2**36 values, beyond one keystream");
  check_seeds_and_signs("secagg_mask", seeds, signs);
  TORCH_CHECK_VALUE(std::isfinite(clip_range) && clip_range > 0,
                    "secagg_mask: clip_range must be a positive finite number, got ", clip_range);
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale >= 0,
                    "secagg_mask: scale must be a finite number >= 0, got ", scale);
  TORCH_CHECK_VALUE(clip_range * scale <= kMaxQuantized,
                    "secagg_mask: clip_range * scale must be <= 2**31 - 1 so that every "
                    "quantized value fits in int32, got ",
                    clip_range * scale);
}

void check_secagg_unmask_inputs(const at::Tensor& masked, const at::Tensor& seeds,
                                c10::IntArrayRef signs, double scale) {
  TORCH_CHECK_TYPE(masked.scalar_type() == at::kInt, "secagg_unmask: masked must be int32, got ",
                   masked.scalar_type());
  TORCH_CHECK_VALUE(masked.dim() == 2,
                    "secagg_unmask: masked must be a 2-D tensor [K, N] (one masked vector per "
                    "row), got shape ",
                    masked.sizes());
  TORCH_CHECK_VALUE(masked.is_contiguous(), "secagg_unmask: masked must be contiguous");
  TORCH_CHECK_VALUE(masked.size(1) < kMaxStreamWords,
                    "secagg_unmask: masked rows have more than 2**36 values, beyond one keystream");
  check_seeds_and_signs("secagg_unmask", seeds, signs);
  TORCH_CHECK_VALUE(std::isfinite(scale), "secagg_unmask: scale must be finite, got ", scale);
}

namespace {

using chacha20::kBlockWords;
using chacha20::StreamKey;

// Work unit of the threads: 1024 blocks (64 KiB of words), a multiple of every L; small enough
// to balance, large enough that taking one costs nothing.
constexpr int64_t kChunkBlocks = 1024;

struct Mask {
  StreamKey key;
  bool negate;
};

// Outputs are fresh allocations, written once; for large ones, back them with 2 MiB pages where
// the kernel allows it (THP in "madvise" mode), which cuts the page faults of the first write
// 512-fold. A hint only: failure changes nothing.
constexpr size_t kHugePage = size_t{2} << 20;

at::Tensor with_huge_pages(at::Tensor out) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const size_t bytes = out.nbytes();
  if (bytes >= 2 * kHugePage) {
    const auto begin = reinterpret_cast<uintptr_t>(out.mutable_data_ptr());
    const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t last = (begin + bytes) & ~(kHugePage - 1);
    if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
  return out;
}

std::vector<Mask> masks_of(const at::Tensor& seeds, c10::IntArrayRef signs) {
  const at::Tensor cpu = seeds.cpu();
  const uint8_t* bytes = cpu.const_data_ptr<uint8_t>();
  std::vector<Mask> masks(signs.size());
  for (size_t m = 0; m < signs.size(); ++m) {
    masks[m] = {chacha20::make_stream_key(bytes + 32 * m, nullptr), signs[m] < 0};
  }
  return masks;
}

template <int L>
struct Lanes {
  // The explicit alignment matters: GCC gives a dependent vector type only 16-byte alignment.
  typedef uint32_t V __attribute__((vector_size(4 * L), aligned(4 * L)));
};

// A mask's initial state with every word broadcast to the lanes (word 12, the block counter,
// differs per lane and is set per group), as the L-lane vectors read it. Built once per chunk
// and mask, it makes the state set-up and the feed-forward of a group 16 vector loads each.
struct alignas(64) LaneState {
  uint32_t words[kBlockWords * 16];  // word i of lane j at [i * L + j], L <= 16
};

template <int L>
std::vector<LaneState> lane_states(const Mask* masks, int64_t n_masks) {
  std::vector<LaneState> states(static_cast<size_t>(n_masks));
  for (int64_t m = 0; m < n_masks; ++m) {
    uint32_t x[kBlockWords];
    chacha20::init_state(x, masks[m].key, 0u);
    for (int i = 0; i < kBlockWords; ++i)
      for (int j = 0; j < L; ++j) states[m].words[i * L + j] = x[i];
  }
  return states;
}

// Adds every mask's keystream, with its sign, to the words of L consecutive blocks from
// `first_block` on; w holds them in stream order (word i of block j at w[16 j + i]).
template <int L>
FLAUDIT_HD void add_masks(uint32_t* w, const Mask* masks, const LaneState* states,
                          int64_t n_masks, uint32_t first_block) {
  using V = typename Lanes<L>::V;
  alignas(64) uint32_t lanes[kBlockWords * L];
  for (int j = 0; j < L; ++j)
    for (int i = 0; i < kBlockWords; ++i) lanes[i * L + j] = w[j * kBlockWords + i];
  V acc[kBlockWords];
  std::memcpy(acc, lanes, sizeof(acc));
  V counters;
  for (int j = 0; j < L; ++j) counters[j] = first_block + static_cast<uint32_t>(j);
  for (int64_t m = 0; m < n_masks; ++m) {
    V init[kBlockWords];
    std::memcpy(init, states[m].words, sizeof(init));
    V x[kBlockWords];
    for (int i = 0; i < kBlockWords; ++i) x[i] = init[i];
    x[12] = counters;
    chacha20::rounds(x);
    for (int i = 0; i < kBlockWords; ++i) x[i] += init[i];
    x[12] += counters;
    if (masks[m].negate) {
      for (int i = 0; i < kBlockWords; ++i) acc[i] -= x[i];
    } else {
      for (int i = 0; i < kBlockWords; ++i) acc[i] += x[i];
    }
  }
  std::memcpy(lanes, acc, sizeof(acc));
  for (int j = 0; j < L; ++j)
    for (int i = 0; i < kBlockWords; ++i) w[j * kBlockWords + i] = lanes[i * L + j];
}

// Runs `job` over blocks [block_begin, block_end) of its stream, L blocks at a time: the job
// loads the group's words (quantized update, sum of masked rows, zeros), the masks are added,
// the job stores the result. block_begin is a multiple of L.
template <int L, class Job>
FLAUDIT_HD void run_groups(Job& job, int64_t block_begin, int64_t block_end) {
  const auto states = lane_states<L>(job.masks, job.n_masks);
  alignas(64) uint32_t w[kBlockWords * L];
  for (int64_t b = block_begin; b < block_end; b += L) {
    const int64_t word0 = b * kBlockWords;
    const int64_t count = std::min<int64_t>(kBlockWords * L, job.n_words - word0);
    job.load(word0, count, w);
    for (int64_t i = count; i < kBlockWords * L; ++i) w[i] = 0;
    add_masks<L>(w, job.masks, states.data(), job.n_masks, static_cast<uint32_t>(job.first_counter + b));
    job.store(word0, count, w);
  }
}

template <class Job>
__attribute__((target("avx512f"))) void run_avx512(Job& job, int64_t begin, int64_t end) {
  run_groups<16>(job, begin, end);
}

template <class Job>
__attribute__((target("avx2"))) void run_avx2(Job& job, int64_t begin, int64_t end) {
  run_groups<8>(job, begin, end);
}

template <class Job>
void run_sse2(Job& job, int64_t begin, int64_t end) {
  run_groups<4>(job, begin, end);
}

enum class Isa { sse2, avx2, avx512 };

Isa detected_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return Isa::avx512;
    if (__builtin_cpu_supports("avx2")) return Isa::avx2;
    return Isa::sse2;
  }();
  return isa;
}

// The widest ISA this CPU has, or the narrower one FLAUDIT_SECAGG_ISA (sse2|avx2|avx512) asks
// for: the tests run every code path on one machine with it.
Isa active_isa() {
  const Isa best = detected_isa();
  const char* forced = std::getenv("FLAUDIT_SECAGG_ISA");
  if (forced == nullptr || forced[0] == '\0') return best;
  const std::string name(forced);
  Isa isa;
  if (name == "sse2") {
    isa = Isa::sse2;
  } else if (name == "avx2") {
    isa = Isa::avx2;
  } else if (name == "avx512") {
    isa = Isa::avx512;
  } else {
    TORCH_CHECK_VALUE(false, "FLAUDIT_SECAGG_ISA must be sse2, avx2 or avx512, got '", name, "'");
  }
  TORCH_CHECK_VALUE(static_cast<int>(isa) <= static_cast<int>(best), "FLAUDIT_SECAGG_ISA=", name,
                    " is not supported by this CPU");
  return isa;
}

// Runs the stream on every thread, which take chunks of blocks from a shared counter until none
// is left (dynamic scheduling: on a loaded machine a descheduled thread delays only its current
// chunk, not a fixed half of the stream). Each thread works on its own copy of the job; jobs
// that count things merge their counts in `finish`.
template <class Job>
void run_stream(const Job& job) {
  const int64_t n_blocks = (job.n_words + kBlockWords - 1) / kBlockWords;
  const int64_t n_chunks = (n_blocks + kChunkBlocks - 1) / kChunkBlocks;
  const Isa isa = active_isa();
  std::atomic<int64_t> next_chunk{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), n_chunks);
  at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      Job local = job;
      for (int64_t c = next_chunk++; c < n_chunks; c = next_chunk++) {
        const int64_t b0 = c * kChunkBlocks;
        const int64_t b1 = std::min(b0 + kChunkBlocks, n_blocks);
        switch (isa) {
          case Isa::avx512: run_avx512(local, b0, b1); break;
          case Isa::avx2: run_avx2(local, b0, b1); break;
          case Isa::sse2: run_sse2(local, b0, b1); break;
        }
      }
      local.finish();
    }
  });
}

struct KeystreamJob {
  uint32_t* out;
  int64_t n_words;
  const Mask* masks;
  int64_t n_masks;
  int64_t first_counter;

  FLAUDIT_HD void load(int64_t, int64_t count, uint32_t* w) {
    std::memset(w, 0, count * sizeof(uint32_t));
  }
  FLAUDIT_HD void store(int64_t word0, int64_t count, const uint32_t* w) {
    std::memcpy(out + word0, w, count * sizeof(uint32_t));
  }
  void finish() {}
};

struct MaskJob {
  const float* update;
  uint32_t* out;
  int64_t n_words;
  const Mask* masks;
  int64_t n_masks;
  int64_t first_counter;
  double clip;
  double scale;
  std::atomic<int64_t>* totals;  // [clipped, non-finite], shared by the tasks
  int64_t clipped = 0;
  int64_t non_finite = 0;

  // Three simple loops rather than one, so that each vectorizes: count, then quantize (the
  // fast path), or quantize value by value when the group holds a NaN or an infinity.
  FLAUDIT_HD void load(int64_t word0, int64_t count, uint32_t* w) {
    const float* x = update + word0;
    int64_t n_clipped = 0;
    int64_t n_bad = 0;
    for (int64_t i = 0; i < count; ++i) {
      const double a = std::fabs(static_cast<double>(x[i]));
      n_clipped += (a > clip) & (a <= static_cast<double>(FLT_MAX));
      n_bad += !(a <= static_cast<double>(FLT_MAX));
    }
    clipped += n_clipped;
    non_finite += n_bad;
    if (n_bad == 0) {
      for (int64_t i = 0; i < count; ++i) {
        const double c = std::min(std::max(static_cast<double>(x[i]), -clip), clip);
        w[i] = static_cast<uint32_t>(static_cast<int32_t>(__builtin_rint(c * scale)));
      }
      return;
    }
    for (int64_t i = 0; i < count; ++i) {
      const double d = static_cast<double>(x[i]);
      const bool finite = std::fabs(d) <= static_cast<double>(FLT_MAX);
      const double c = std::min(std::max(d, -clip), clip);
      w[i] = finite ? static_cast<uint32_t>(static_cast<int32_t>(__builtin_rint(c * scale))) : 0u;
    }
  }
  FLAUDIT_HD void store(int64_t word0, int64_t count, const uint32_t* w) {
    std::memcpy(out + word0, w, count * sizeof(uint32_t));
  }
  void finish() {
    totals[0] += clipped;
    totals[1] += non_finite;
  }
};

struct UnmaskJob {
  const uint32_t* rows;  // [K, n_words]
  int64_t n_rows;
  uint32_t* sum;
  float* value;
  int64_t n_words;
  const Mask* masks;
  int64_t n_masks;
  int64_t first_counter;
  double scale;

  FLAUDIT_HD void load(int64_t word0, int64_t count, uint32_t* w) {
    for (int64_t i = 0; i < count; ++i) w[i] = 0;
    for (int64_t k = 0; k < n_rows; ++k) {
      const uint32_t* row = rows + k * n_words + word0;
      for (int64_t i = 0; i < count; ++i) w[i] += row[i];
    }
  }
  FLAUDIT_HD void store(int64_t word0, int64_t count, const uint32_t* w) {
    std::memcpy(sum + word0, w, count * sizeof(uint32_t));
    for (int64_t i = 0; i < count; ++i) {
      value[word0 + i] =
          static_cast<float>(static_cast<double>(static_cast<int32_t>(w[i])) * scale);
    }
  }
  void finish() {}
};

at::Tensor chacha20_cpu(const at::Tensor& key, const at::Tensor& nonce, int64_t counter,
                        int64_t n_words) {
  check_chacha20_inputs(key, nonce, counter, n_words);
  TORCH_CHECK_VALUE(key.device().is_cpu(), "chacha20: the CPU kernel got key on ", key.device());
  const at::Tensor k = key.contiguous();
  const at::Tensor n = nonce.contiguous();
  const Mask mask{chacha20::make_stream_key(k.const_data_ptr<uint8_t>(), n.const_data_ptr<uint8_t>()),
                  false};
  at::Tensor out = with_huge_pages(at::empty({n_words}, key.options().dtype(at::kInt)));
  run_stream(KeystreamJob{reinterpret_cast<uint32_t*>(out.mutable_data_ptr<int32_t>()), n_words,
                          &mask, 1, counter});
  return out;
}

std::tuple<at::Tensor, at::Tensor> secagg_mask_cpu(const at::Tensor& update, const at::Tensor& seeds,
                                                   c10::IntArrayRef signs, double clip_range,
                                                   double scale) {
  check_secagg_mask_inputs(update, seeds, signs, clip_range, scale);
  TORCH_CHECK_VALUE(update.device().is_cpu(), "secagg_mask: the CPU kernel got update on ",
                    update.device());
  const std::vector<Mask> masks = masks_of(seeds, signs);
  const int64_t n = update.numel();
  at::Tensor masked = with_huge_pages(at::empty({n}, update.options().dtype(at::kInt)));
  std::atomic<int64_t> totals[2] = {0, 0};
  MaskJob job{update.const_data_ptr<float>(),
              reinterpret_cast<uint32_t*>(masked.mutable_data_ptr<int32_t>()),
              n,
              masks.data(),
              static_cast<int64_t>(masks.size()),
              0,
              clip_range,
              scale,
              totals};
  run_stream(job);
  at::Tensor counts = at::empty({2}, update.options().dtype(at::kLong));
  counts.mutable_data_ptr<int64_t>()[0] = totals[0].load();
  counts.mutable_data_ptr<int64_t>()[1] = totals[1].load();
  return {masked, counts};
}

std::tuple<at::Tensor, at::Tensor> secagg_unmask_cpu(const at::Tensor& masked,
                                                     const at::Tensor& seeds,
                                                     c10::IntArrayRef signs, double scale) {
  check_secagg_unmask_inputs(masked, seeds, signs, scale);
  TORCH_CHECK_VALUE(masked.device().is_cpu(), "secagg_unmask: the CPU kernel got masked on ",
                    masked.device());
  const std::vector<Mask> masks = masks_of(seeds, signs);
  const int64_t n = masked.size(1);
  at::Tensor sum = with_huge_pages(at::empty({n}, masked.options()));
  at::Tensor value = with_huge_pages(at::empty({n}, masked.options().dtype(at::kFloat)));
  run_stream(UnmaskJob{reinterpret_cast<const uint32_t*>(masked.const_data_ptr<int32_t>()),
                       masked.size(0), reinterpret_cast<uint32_t*>(sum.mutable_data_ptr<int32_t>()),
                       value.mutable_data_ptr<float>(), n, masks.data(),
                       static_cast<int64_t>(masks.size()), 0, scale});
  return {sum, value};
}

}  // namespace
}  // namespace flaudit

TORCH_LIBRARY_FRAGMENT(flaudit, m) {
  m.def("chacha20(Tensor key, Tensor nonce, int counter, int n_words) -> Tensor");
  m.def(
      "secagg_mask(Tensor update, Tensor seeds, int[] signs, float clip_range, float scale) "
      "-> (Tensor masked, Tensor counts)");
  m.def("secagg_unmask(Tensor masked, Tensor seeds, int[] signs, float scale) -> (Tensor sum, Tensor value)");
}

TORCH_LIBRARY_IMPL(flaudit, CPU, m) {
  m.impl("chacha20", &flaudit::chacha20_cpu);
  m.impl("secagg_mask", &flaudit::secagg_mask_cpu);
  m.impl("secagg_unmask", &flaudit::secagg_unmask_cpu);
}
