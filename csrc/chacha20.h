// ChaCha20 (RFC 8439) block function, shared by the CPU (.cpp) and CUDA (.cu) kernels.
//
// The state is 16 32-bit words: 4 constants, the 256-bit key, a 32-bit block counter and a
// 96-bit nonce. A block of keystream is the state after 20 rounds plus the initial state, read
// as 16 little-endian words. Everything is templated on the word type `V`, so the same code runs
// on one block per CUDA thread (V = uint32_t) and on L blocks at once in the CPU kernel (V = a
// GCC vector of L uint32 lanes, lane j holding block j: the 16-word state is then 16 vectors and
// every operation is one SIMD instruction, with no shuffles inside the rounds).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FLAUDIT_HD __host__ __device__ __forceinline__
#else
#define FLAUDIT_HD inline __attribute__((always_inline))
#endif

namespace flaudit::chacha20 {

// "expand 32-byte k", little-endian.
constexpr uint32_t kSigma0 = 0x61707865u;
constexpr uint32_t kSigma1 = 0x3320646eu;
constexpr uint32_t kSigma2 = 0x79622d32u;
constexpr uint32_t kSigma3 = 0x6b206574u;

constexpr int kBlockWords = 16;

// The key and nonce of one keystream, as the words they occupy in the state.
struct StreamKey {
  uint32_t key[8];
  uint32_t nonce[3];
};

FLAUDIT_HD uint32_t load_le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

// key: 32 bytes; nonce: 12 bytes, or nullptr for the all-zero nonce.
FLAUDIT_HD StreamKey make_stream_key(const uint8_t* key, const uint8_t* nonce) {
  StreamKey k{};
  for (int i = 0; i < 8; ++i) k.key[i] = load_le32(key + 4 * i);
  for (int i = 0; i < 3; ++i) k.nonce[i] = nonce ? load_le32(nonce + 4 * i) : 0u;
  return k;
}

template <int N, class V>
FLAUDIT_HD V rotl(V x) {
  return (x << N) | (x >> (32 - N));
}

template <class V>
FLAUDIT_HD void quarter_round(V& a, V& b, V& c, V& d) {
  a += b; d ^= a; d = rotl<16>(d);
  c += d; b ^= c; b = rotl<12>(b);
  a += b; d ^= a; d = rotl<8>(d);
  c += d; b ^= c; b = rotl<7>(b);
}

// The 20 rounds (10 double rounds) on the state x, without the final feed-forward.
template <class V>
FLAUDIT_HD void rounds(V (&x)[kBlockWords]) {
  for (int r = 0; r < 10; ++r) {
    quarter_round(x[0], x[4], x[8], x[12]);
    quarter_round(x[1], x[5], x[9], x[13]);
    quarter_round(x[2], x[6], x[10], x[14]);
    quarter_round(x[3], x[7], x[11], x[15]);
    quarter_round(x[0], x[5], x[10], x[15]);
    quarter_round(x[1], x[6], x[11], x[12]);
    quarter_round(x[2], x[7], x[8], x[13]);
    quarter_round(x[3], x[4], x[9], x[14]);
  }
}

// x <- keystream block of the state x (20 rounds, then the feed-forward of the input).
template <class V>
FLAUDIT_HD void block(V (&x)[kBlockWords]) {
  V in[kBlockWords];
  for (int i = 0; i < kBlockWords; ++i) in[i] = x[i];
  rounds(x);
  for (int i = 0; i < kBlockWords; ++i) x[i] += in[i];
}

// The initial state for `counter` (a scalar, or a vector of per-lane counters).
template <class V, class C>
FLAUDIT_HD void init_state(V (&x)[kBlockWords], const StreamKey& k, C counter) {
  x[0] = V{} + kSigma0;
  x[1] = V{} + kSigma1;
  x[2] = V{} + kSigma2;
  x[3] = V{} + kSigma3;
  for (int i = 0; i < 8; ++i) x[4 + i] = V{} + k.key[i];
  x[12] = V{} + counter;
  for (int i = 0; i < 3; ++i) x[13 + i] = V{} + k.nonce[i];
}

}  // namespace flaudit::chacha20
