// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), identical to zlib's
// crc32(). Every payload is checked before it decodes, so the check's speed is
// part of load time: slicing-by-16 tables (16 KiB, built once) run at about
// 2.6 GB/s here, a fifth of a lossless model's decode; on x86-64 with
// PCLMULQDQ (checked at run time) the buffer is folded 64 bytes at a time
// with carry-less multiplies instead (Intel, "Fast CRC Computation for
// Generic Polynomials Using PCLMULQDQ Instruction", 2009): 7.3 GB/s.
#include "common.h"

#ifdef L2C_X86_DISPATCH
#include <immintrin.h>
#endif

namespace l2c {
namespace {

struct Tables {
  uint32_t t[16][256];
  Tables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 16; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
  }
};

const Tables& tables() {
  static const Tables tab;  // thread-safe initialisation (C++11 magic statics)
  return tab;
}

inline uint32_t le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

// The table-driven CRC of n bytes on the pre-inverted state c (no final inversion).
uint32_t crc32_tables(const uint8_t* p, size_t n, uint32_t c) {
  const auto& t = tables().t;
  while (n >= 16) {
    const uint32_t a = le32(p) ^ c, b = le32(p + 4), d = le32(p + 8), e = le32(p + 12);
    c = t[15][a & 0xff] ^ t[14][(a >> 8) & 0xff] ^ t[13][(a >> 16) & 0xff] ^ t[12][a >> 24] ^
        t[11][b & 0xff] ^ t[10][(b >> 8) & 0xff] ^ t[9][(b >> 16) & 0xff] ^ t[8][b >> 24] ^
        t[7][d & 0xff] ^ t[6][(d >> 8) & 0xff] ^ t[5][(d >> 16) & 0xff] ^ t[4][d >> 24] ^
        t[3][e & 0xff] ^ t[2][(e >> 8) & 0xff] ^ t[1][(e >> 16) & 0xff] ^ t[0][e >> 24];
    p += 16;
    n -= 16;
  }
  while (n--) c = t[0][(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

#ifdef L2C_X86_DISPATCH
// Folding constants for the reflected polynomial: x^(k) mod P(x), bit-reflected
// and shifted as the paper's section on reflected data describes.
//   fold by 512 bits: x^(4*128+32), x^(4*128-32);  by 128: x^(128+32), x^(128-32)
//   64 -> 32 bits: x^64;  Barrett: P(x) and floor(x^64 / P(x))
constexpr uint64_t kFold512Lo = 0x154442bd4, kFold512Hi = 0x1c6e41596;
constexpr uint64_t kFold128Lo = 0x1751997d0, kFold128Hi = 0x0ccaa009e;
constexpr uint64_t kFold64 = 0x163cd6124;
constexpr uint64_t kPoly = 0x1db710641, kMu = 0x1f7011641;

__attribute__((target("pclmul,sse4.1"))) inline __m128i fold(__m128i x, __m128i k, __m128i next) {
  return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), next);
}

// The CRC of n >= 64 bytes (n a multiple of 16) on the pre-inverted state c.
__attribute__((target("pclmul,sse4.1"))) uint32_t crc32_pclmul(const uint8_t* p, size_t n, uint32_t c) {
  auto load = [](const uint8_t* q) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)); };
  __m128i x0 = _mm_xor_si128(load(p), _mm_cvtsi32_si128(static_cast<int>(c)));
  __m128i x1 = load(p + 16), x2 = load(p + 32), x3 = load(p + 48);
  p += 64;
  n -= 64;
  const __m128i k512 = _mm_set_epi64x(static_cast<long long>(kFold512Hi), static_cast<long long>(kFold512Lo));
  for (; n >= 64; p += 64, n -= 64) {
    x0 = fold(x0, k512, load(p));
    x1 = fold(x1, k512, load(p + 16));
    x2 = fold(x2, k512, load(p + 32));
    x3 = fold(x3, k512, load(p + 48));
  }
  const __m128i k128 = _mm_set_epi64x(static_cast<long long>(kFold128Hi), static_cast<long long>(kFold128Lo));
  __m128i x = fold(x0, k128, x1);
  x = fold(x, k128, x2);
  x = fold(x, k128, x3);
  for (; n >= 16; p += 16, n -= 16) x = fold(x, k128, load(p));
  // 128 -> 64 bits (appending 32 zero bits), then 64 -> 32, then Barrett.
  const __m128i mask32 = _mm_set_epi32(0, 0, 0, -1);
  x = _mm_xor_si128(_mm_clmulepi64_si128(x, k128, 0x10), _mm_srli_si128(x, 8));
  const __m128i k64 = _mm_set_epi64x(0, static_cast<long long>(kFold64));
  x = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x, mask32), k64, 0x00), _mm_srli_si128(x, 4));
  const __m128i barrett = _mm_set_epi64x(static_cast<long long>(kMu), static_cast<long long>(kPoly));
  __m128i t = _mm_clmulepi64_si128(_mm_and_si128(x, mask32), barrett, 0x10);
  t = _mm_clmulepi64_si128(_mm_and_si128(t, mask32), barrett, 0x00);
  return static_cast<uint32_t>(_mm_extract_epi32(_mm_xor_si128(x, t), 1));
}

bool have_pclmul() {
  static const bool yes = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
  return yes;
}
#endif

}  // namespace

uint32_t crc32(const uint8_t* p, size_t n, uint32_t crc) {
  uint32_t c = ~crc;
#ifdef L2C_X86_DISPATCH
  if (n >= 64 && have_pclmul()) {
    const size_t bulk = n & ~size_t(15);
    c = crc32_pclmul(p, bulk, c);
    p += bulk;
    n -= bulk;
  }
#endif
  return ~crc32_tables(p, n, c);
}

}  // namespace l2c
