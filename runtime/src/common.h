// Internal helpers shared by the onnx_l2c runtime sources.
#ifndef ONNX_L2C_COMMON_H
#define ONNX_L2C_COMMON_H

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

#include "onnx_l2c.h"

// x86-64 with GCC or Clang: hot loops may have a second version for newer
// instruction sets (__attribute__((target(...)))), chosen at run time with
// __builtin_cpu_supports; every other build has the portable one only.
// Not clang-cl: __builtin_cpu_supports needs compiler-rt's __cpu_model,
// which the MSVC link step does not bring.
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(_MSC_VER)
#define L2C_X86_DISPATCH 1
#endif

// Under AddressSanitizer every buffer comes from the allocator it watches
// (model.cc maps large tensors itself otherwise).
#if defined(__SANITIZE_ADDRESS__)
#define L2C_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define L2C_ASAN 1
#endif
#endif

#if defined(__GNUC__) || defined(__clang__)
#define L2C_NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define L2C_NOINLINE __declspec(noinline)
#else
#define L2C_NOINLINE
#endif

namespace l2c {

// Internal error: code is one of L2C_E_*. Never crosses the C ABI.
struct Error : std::runtime_error {
  int code;
  Error(int c, const std::string& msg) : std::runtime_error(msg), code(c) {}
};

[[noreturn]] inline void fail(int code, const std::string& msg) { throw Error(code, msg); }
[[noreturn]] inline void corrupt(const std::string& msg) { throw Error(L2C_E_CORRUPT, msg); }

inline std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

// Bounds-checked little-endian reader over [p, p + n).
class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), n_(n), pos_(0) {}
  size_t remaining() const { return n_ - pos_; }
  size_t pos() const { return pos_; }
  const uint8_t* ptr() const { return p_ + pos_; }
  // Throws a CORRUPT error naming `what` if fewer than k bytes remain.
  void need(size_t k, const char* what) const {
    if (k > remaining())
      corrupt(std::string(what) + ": truncated: needs " + std::to_string(k) + " bytes, " +
              std::to_string(remaining()) + " remain");
  }
  const uint8_t* take(size_t k, const char* what) {
    need(k, what);
    const uint8_t* r = p_ + pos_;
    pos_ += k;
    return r;
  }
  uint8_t u8(const char* what) { return *take(1, what); }
  uint16_t u16(const char* what) {
    const uint8_t* b = take(2, what);
    return static_cast<uint16_t>(b[0] | (b[1] << 8));
  }
  uint32_t u32(const char* what) {
    const uint8_t* b = take(4, what);
    return static_cast<uint32_t>(b[0]) | (static_cast<uint32_t>(b[1]) << 8) |
           (static_cast<uint32_t>(b[2]) << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  uint64_t u64(const char* what) {
    uint64_t lo = u32(what);
    uint64_t hi = u32(what);
    return lo | (hi << 32);
  }
  float f32(const char* what) {
    uint32_t bits = u32(what);
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  // Unsigned LEB128, at most 5 bytes, value < 2^32.
  uint32_t varint(const char* what) {
    uint64_t v = 0;
    for (int i = 0; i < 5; ++i) {
      uint8_t b = u8(what);
      v |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
      if (!(b & 0x80)) {
        if (v > 0xffffffffull) corrupt(std::string(what) + ": varint exceeds 32 bits");
        return static_cast<uint32_t>(v);
      }
    }
    corrupt(std::string(what) + ": varint longer than 5 bytes");
  }
  void reserved(size_t k, const char* what) {
    const uint8_t* b = take(k, what);
    for (size_t i = 0; i < k; ++i)
      if (b[i] != 0) corrupt(std::string(what) + ": reserved byte is not zero");
  }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_;
};

// Little-endian writer into a growable std::string-like byte vector.
template <class Vec>
inline void put_u8(Vec& v, uint8_t x) { v.push_back(x); }
template <class Vec>
inline void put_u16(Vec& v, uint16_t x) {
  v.push_back(static_cast<uint8_t>(x));
  v.push_back(static_cast<uint8_t>(x >> 8));
}
template <class Vec>
inline void put_u32(Vec& v, uint32_t x) {
  for (int i = 0; i < 4; ++i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
}
template <class Vec>
inline void put_u64(Vec& v, uint64_t x) {
  for (int i = 0; i < 8; ++i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
}
template <class Vec>
inline void put_varint(Vec& v, uint32_t x) {
  while (x >= 0x80) {
    v.push_back(static_cast<uint8_t>(x | 0x80));
    x >>= 7;
  }
  v.push_back(static_cast<uint8_t>(x));
}

// a * b with overflow detection.
inline bool mul_overflow(uint64_t a, uint64_t b, uint64_t* out) {
  if (a != 0 && b > UINT64_MAX / a) return true;
  *out = a * b;
  return false;
}

uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc = 0);

// Copies msg into err (NUL-terminated, truncated to err_len).
inline void set_err(char* err, size_t err_len, const std::string& msg) {
  if (!err || err_len == 0) return;
  size_t k = msg.size() < err_len - 1 ? msg.size() : err_len - 1;
  std::memcpy(err, msg.data(), k);
  err[k] = '\0';
}

}  // namespace l2c

#endif
