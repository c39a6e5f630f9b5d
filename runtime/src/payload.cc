// Payload parsing (header + stage state machine) and execution.
#include "payload.h"

#include <algorithm>
#include <cmath>

namespace l2c {
namespace {

constexpr uint64_t kMaxNumel = uint64_t(1) << 40;

const char* stage_name(uint8_t kind) {
  switch (kind) {
    case kEntropy: return "entropy";
    case kAffine: return "affine";
    case kCodebook: return "codebook";
    case kCast: return "cast";
    case kRaw: return "raw";
    case kTransform: return "transform";
    case kExponent: return "exponent";
    case kExpand: return "expand";
    default: return "unknown";
  }
}

bool is_float_dtype(int dtype) { return dtype == kFloat32 || dtype == kFloat16 || dtype == kBFloat16; }

// Bytes per element of a dtype this library decodes; 0 for any other.
size_t elem_size(int dtype) {
  switch (dtype) {
    case kUint8: case kInt8: case kBool: case kFloat8E4M3FN: case kFloat8E4M3FNUZ: case kFloat8E5M2:
    case kFloat8E5M2FNUZ:
    case kUint4: case kInt4: case kFloat4E2M1: case kUint2: case kInt2:  // one index per element, packed on output
      return 1;
    case kFloat16: case kBFloat16: case kUint16: case kInt16:
      return 2;
    case kFloat32: case kInt32: case kUint32:
      return 4;
    case kInt64: case kUint64: case kDouble:
      return 8;
    default:
      return 0;
  }
}

const char* kValidDtypes =
    "1 (float32), 10 (float16), 16 (bfloat16); raw only: 2 (uint8), 3 (int8), 4 (uint16), 5 (int16), 6 (int32), "
    "7 (int64), 9 (bool), 11 (double), 12 (uint32), 13 (uint64), 17-20 (float8), 21 (uint4), 22 (int4), "
    "23 (float4e2m1), 25 (uint2), 26 (int2)";

template <class Dim>
std::string dims_str(const Dim* dims, int64_t ndim) {
  std::string s = "[";
  for (int64_t i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

std::string shape_str(const Plan& p) { return dims_str(p.dims, p.ndim); }

float read_f32(const uint8_t* b) {
  uint32_t u = static_cast<uint32_t>(b[0]) | (static_cast<uint32_t>(b[1]) << 8) |
               (static_cast<uint32_t>(b[2]) << 16) | (static_cast<uint32_t>(b[3]) << 24);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::vector<float> read_finite(Reader& r, uint32_t n, const std::string& what, const char* field) {
  const uint8_t* b = r.take(size_t(n) * 4, what.c_str());
  std::vector<float> v(n);
  for (uint32_t i = 0; i < n; ++i) {
    v[i] = read_f32(b + 4 * i);
    if (!std::isfinite(v[i]))
      corrupt(what + ": " + field + "[" + std::to_string(i) + "] is not finite");
  }
  return v;
}

// float16 bits -> float32, exactly (every float16 value is a float32 value).
float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // inf / NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);  // rebias 15 -> 127
  } else if (man == 0) {
    bits = sign;  // ±0
  } else {
    // Subnormal half, man * 2^-24: a normal float32. Normalised with integer
    // operations only, so a host with flush-to-zero / denormals-are-zero set
    // still gets the exact value.
    // After s shifts m has bit 10 set and the value is (m / 2^10) * 2^(-14 - s).
    uint32_t e = 127 - 14;  // float32 biased exponent, one less per shift
    uint32_t m = man;
    while (!(m & 0x400u)) {
      m <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((m & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::vector<float> read_finite_f16(Reader& r, uint32_t n, const std::string& what, const char* field) {
  const uint8_t* b = r.take(size_t(n) * 2, what.c_str());
  std::vector<float> v(n);
  for (uint32_t i = 0; i < n; ++i) {
    v[i] = f16_to_f32(static_cast<uint16_t>(b[2 * i] | (b[2 * i + 1] << 8)));
    if (!std::isfinite(v[i]))
      corrupt(what + ": " + field + "[" + std::to_string(i) + "] is not finite");
  }
  return v;
}

// The transform body (FORMAT.md "transform"), everything that does not
// depend on the stage's place in the sequence. Sets p->coded = rows*k.
void parse_transform(Reader& body, const std::string& what, Plan* p) {
  const char* w = what.c_str();
  p->rows = body.u64(w);
  p->k = body.u32(w);
  p->cols = body.u32(w);
  const uint8_t layout = body.u8(w);
  const uint8_t basis_dtype = body.u8(w);
  const uint8_t has_mean = body.u8(w);
  body.reserved(1, w);
  if (p->k < 1 || p->k > p->cols)
    corrupt(what + ": k = " + std::to_string(p->k) + " must be in 1..cols (" +
            std::to_string(p->cols) + ")");
  const uint64_t nbasis = uint64_t(p->k) * p->cols;  // both < 2^32: no overflow
  if (nbasis > kMaxTransformBasis)
    corrupt(what + ": basis k*cols = " + std::to_string(p->k) + "*" + std::to_string(p->cols) +
            " exceeds 2^24 values");
  uint64_t prod;
  if (mul_overflow(p->rows, p->cols, &prod) || prod != p->numel)
    corrupt(what + ": rows*cols = " + std::to_string(p->rows) + "*" + std::to_string(p->cols) +
            " does not match " + std::to_string(p->numel) + " elements");
  if (layout > 1) corrupt(what + ": layout " + std::to_string(layout) + " is not 0 or 1");
  if (basis_dtype != kFloat32 && basis_dtype != kFloat16)
    corrupt(what + ": basis_dtype " + std::to_string(basis_dtype) +
            " is not 1 (float32) or 10 (float16)");
  if (has_mean > 1) corrupt(what + ": has_mean must be 0 or 1");
  p->layout = layout;
  p->has_mean = has_mean == 1;
  // Size check before allocating: a hostile header cannot make us reserve
  // memory that the body does not back.
  const size_t esize = basis_dtype == kFloat32 ? 4 : 2;
  body.need(size_t(nbasis) * esize + (p->has_mean ? size_t(p->cols) * 4 : 0), w);
  const uint32_t n = static_cast<uint32_t>(nbasis);
  p->basis = basis_dtype == kFloat32 ? read_finite(body, n, what, "basis")
                                     : read_finite_f16(body, n, what, "basis");
  if (p->has_mean) p->mean = read_finite(body, p->cols, what, "mean");
  p->coded = p->rows * p->k;  // <= rows*cols = numel, as k <= cols
  p->has_transform = true;
}

// The exponent body (FORMAT.md "exponent"): layout, then one stream of
// `groups` exponents in [0, 31], decoded here into exact multipliers 2^-e.
void parse_exponent(Reader& body, const std::string& what, Plan* p) {
  const char* w = what.c_str();
  p->e_outer = body.u64(w);
  p->e_groups = body.u32(w);
  p->e_inner = body.u64(w);
  uint64_t prod;
  if (p->e_groups < 1 || p->e_groups > kMaxExponentGroups)
    corrupt(what + ": groups = " + std::to_string(p->e_groups) + " not in 1..2^24");
  if (mul_overflow(p->e_outer, p->e_groups, &prod) || mul_overflow(prod, p->e_inner, &prod) ||
      prod != p->coded)
    corrupt(what + ": outer*groups*inner = " + std::to_string(p->e_outer) + "*" +
            std::to_string(p->e_groups) + "*" + std::to_string(p->e_inner) + " does not match " +
            std::to_string(p->coded) + " elements");
  Stream stream;
  parse_stream(body, p->e_groups, what, &stream);
  if (stream.max_index > kMaxExponent)
    corrupt(what + ": exponent alphabet above " + std::to_string(kMaxExponent + 1));
  std::vector<uint8_t> e(p->e_groups);
  StreamDecoder dec(stream, 0, what);
  dec.next(e.data(), e.size());
  dec.finish();
  p->e_mult.resize(p->e_groups);
  for (uint32_t g = 0; g < p->e_groups; ++g) {
    // 2^-e built from its bits (biased exponent 127 - e, e <= 31): exact, no libm.
    const uint32_t bits = (127u - e[g]) << 23;
    std::memcpy(&p->e_mult[g], &bits, 4);
  }
  p->has_exponent = true;
}

// The expand body (FORMAT.md "expand"): layout, then four streams whose
// counts follow from the block modes. The modes are decoded here once, in
// slices, only to count the blocks of each mode (execute decodes them again),
// so a hostile count can neither over-read nor make us allocate.
void parse_expand(Reader& body, const std::string& what, Plan* p) {
  const char* w = what.c_str();
  p->x_outer = body.u64(w);
  p->x_n = body.u64(w);
  p->x_inner = body.u64(w);
  p->x_block = body.u32(w);
  p->kept_offset = static_cast<int32_t>(body.u32(w));
  uint64_t prod;
  if (mul_overflow(p->x_outer, p->x_n, &prod) || mul_overflow(prod, p->x_inner, &prod) ||
      prod != p->coded)
    corrupt(what + ": outer*n*inner = " + std::to_string(p->x_outer) + "*" + std::to_string(p->x_n) +
            "*" + std::to_string(p->x_inner) + " does not match " + std::to_string(p->coded) +
            " elements");
  if (p->x_block < 1 || p->x_block > kMaxExpandBlock || (p->x_n > 0 && p->x_block > p->x_n))
    corrupt(what + ": block " + std::to_string(p->x_block) + " not in 1..min(n, " +
            std::to_string(kMaxExpandBlock) + ")");
  const uint64_t per_row = p->x_n == 0 ? 0 : (p->x_n - 1) / p->x_block + 1;
  const uint64_t nblocks = p->x_outer * per_row * p->x_inner;  // <= outer*n*inner = coded
  parse_stream(body, nblocks, what + " modes", &p->x_modes);
  if (p->x_modes.max_index > kKeep) corrupt(what + " modes: alphabet above 3");
  uint64_t unified = 0, unified_elems = 0, kept_elems = 0;
  if (p->x_modes.mode == kConstant) {
    // Every block has one mode: the counts follow without a pass over the
    // blocks (a few bytes may declare 2^40 of them), and the blocks together
    // hold every element.
    const uint32_t mode = p->x_modes.max_index;
    unified = mode == kUnify ? nblocks : 0;
    unified_elems = mode == kUnify ? p->coded : 0;
    kept_elems = mode == kKeep ? p->coded : 0;
  } else {
    // A stored or rANS modes stream holds at least one bit per 8 blocks...
    StreamDecoder dec(p->x_modes, 0, what + " modes");
    uint8_t mode[4096];
    uint64_t j = 0, k = 0;  // block position along n, and along inner
    for (uint64_t b = 0; b < nblocks; b += sizeof mode) {
      const uint64_t m = std::min<uint64_t>(sizeof mode, nblocks - b);
      dec.next(mode, m);
      for (uint64_t t = 0; t < m; ++t) {
        const uint64_t len = std::min<uint64_t>(p->x_block, p->x_n - j * p->x_block);
        if (mode[t] == kUnify) {
          ++unified;
          unified_elems += len;
        } else if (mode[t] == kKeep) {
          kept_elems += len;
        }
        if (++k == p->x_inner) {
          k = 0;
          if (++j == per_row) j = 0;
        }
      }
    }
    dec.finish();
  }
  parse_stream(body, unified, what + " magnitudes", &p->x_magnitudes);
  if (p->x_magnitudes.max_index > kMaxExpandMagnitude - 1)
    corrupt(what + " magnitudes: alphabet above " + std::to_string(kMaxExpandMagnitude) +
            " (magnitudes are 1.." + std::to_string(kMaxExpandMagnitude) + ")");
  parse_stream(body, unified_elems, what + " signs", &p->x_signs);
  if (p->x_signs.max_index > 1) corrupt(what + " signs: alphabet above 2");
  parse_stream(body, kept_elems, what + " kept", &p->x_kept);
  if (static_cast<int64_t>(p->x_kept.max_index) + p->kept_offset > INT32_MAX)
    corrupt(what + ": kept_offset " + std::to_string(p->kept_offset) + " + index overflows int32");
  p->has_expand = true;
}

// Buffer type between stages (the state of FORMAT.md's decoding model).
enum Buf { kNone, kI32, kF32, kDtype };  // what the stages have produced so far

void parse_stage(Reader& body, uint8_t kind, const std::string& what, Plan* p, Buf* buf) {
  const char* w = what.c_str();
  switch (kind) {
    case kEntropy: {
      if (*buf != kNone) corrupt(what + ": entropy must be the first stage");
      p->symbol_offset = static_cast<int32_t>(body.u32(w));
      parse_stream(body, p->coded, what, &p->symbols);
      if (static_cast<int64_t>(p->symbols.max_index) + p->symbol_offset > INT32_MAX)
        corrupt(what + ": symbol_offset " + std::to_string(p->symbol_offset) +
                " + index overflows int32");
      *buf = kI32;
      return;
    }
    case kAffine: {
      if (*buf != kI32) corrupt(what + ": affine needs int32 symbols from an entropy stage");
      p->outer = body.u64(w);
      p->channels = body.u32(w);
      p->inner = body.u64(w);
      p->theta = body.f32(w);
      const uint8_t has_offset = body.u8(w);
      body.reserved(3, w);
      uint64_t prod;
      if (p->channels == 0 || mul_overflow(p->outer, p->channels, &prod) ||
          mul_overflow(prod, p->inner, &prod) || prod != p->coded)
        corrupt(what + ": outer*channels*inner = " + std::to_string(p->outer) + "*" +
                std::to_string(p->channels) + "*" + std::to_string(p->inner) +
                " does not match " + std::to_string(p->coded) + " elements");
      if (!(p->theta >= 0.0f && p->theta < 1.0f))  // also rejects NaN
        corrupt(what + ": theta must be in [0, 1)");
      if (has_offset > 1) corrupt(what + ": has_offset must be 0 or 1");
      p->has_offset = has_offset == 1;
      body.need(size_t(p->channels) * 4 * (p->has_offset ? 2 : 1), w);
      p->scale = read_finite(body, p->channels, what, "scale");
      if (p->has_offset) p->offset = read_finite(body, p->channels, what, "offset");
      *buf = kF32;
      return;
    }
    case kCodebook: {
      if (*buf != kI32 || p->has_expand)
        corrupt(what + ": codebook needs int32 symbols from an entropy stage");
      const uint32_t size = body.u32(w);
      if (size < 1 || size > (1u << 16))
        corrupt(what + ": codebook size " + std::to_string(size) + " not in 1..65536");
      body.need(size_t(size) * 4, w);
      p->codebook = read_finite(body, size, what, "values");
      *buf = kF32;
      return;
    }
    case kCast: {
      if (*buf != kF32) corrupt(what + ": cast needs a float32 buffer");
      const uint8_t target = body.u8(w);
      body.reserved(3, w);
      if ((target != kFloat16 && target != kBFloat16) || target != p->dtype)
        corrupt(what + ": cast target " + std::to_string(target) + " does not match dtype " +
                std::to_string(p->dtype));
      *buf = kDtype;
      return;
    }
    case kRaw: {
      if (*buf != kNone) corrupt(what + ": raw must be the only stage");
      p->elem_bytes = body.u8(w);
      p->rotate = body.u8(w);
      body.reserved(2, w);
      if (p->elem_bytes != elem_size(p->dtype))
        corrupt(what + ": elem_bytes " + std::to_string(p->elem_bytes) + " does not match dtype " +
                dtype_name(p->dtype));
      if (p->rotate >= 8 * p->elem_bytes)
        corrupt(what + ": rotate " + std::to_string(p->rotate) + " out of range");
      const unsigned packed = packed_bits(p->dtype);
      if (packed && p->rotate) corrupt(what + ": rotate " + std::to_string(p->rotate) + " with a packed dtype");
      const uint32_t max_index = packed ? (1u << packed) - 1 : 255;
      for (uint32_t k = 0; k < p->elem_bytes; ++k) {
        const std::string pw = what + " plane " + std::to_string(k);
        parse_stream(body, p->numel, pw, &p->planes[k]);
        if (p->planes[k].max_index > max_index)
          corrupt(pw + ": alphabet above " + std::to_string(max_index + 1) + " for " + dtype_name(p->dtype));
      }
      *buf = kDtype;
      return;
    }
    case kTransform: {
      // The body was parsed up front (parse_transform); only its place is checked here.
      if (*buf != kF32 || p->kinds.empty() || (p->kinds.back() != kAffine && p->kinds.back() != kExponent))
        corrupt(what + ": transform needs float32 coefficients from an affine stage");
      if (p->has_expand) corrupt(what + ": transform cannot follow an expand stage");
      body.take(body.remaining(), w);
      return;
    }
    case kExponent: {
      if (p->version < kExponentFormatVersion)
        fail(L2C_E_VERSION, what + ": the exponent stage needs format version " +
                                std::to_string(kExponentFormatVersion) + ", the payload is version " +
                                std::to_string(p->version));
      if (*buf != kF32 || p->kinds.empty() || p->kinds.back() != kAffine)
        corrupt(what + ": exponent needs float32 values from an affine stage");
      parse_exponent(body, what, p);
      return;
    }
    case kExpand: {
      if (p->version < kExpandFormatVersion)
        fail(L2C_E_VERSION, what + ": the expand stage needs format version " +
                                std::to_string(kExpandFormatVersion) + ", the payload is version " +
                                std::to_string(p->version));
      if (*buf != kNone) corrupt(what + ": expand must be the first stage");
      parse_expand(body, what, p);
      *buf = kI32;
      return;
    }
    default:
      fail(L2C_E_VERSION, what + ": unknown stage kind " + std::to_string(kind) +
                              " (this library knows 1..8)");
  }
}

// ------------------------------------------------------------ conversions

// float32 -> float16, round to nearest even. Branch-free so that the loop
// vectorises: every case is computed and the right one selected.
inline uint16_t f32_to_f16(uint32_t x) {
  const uint32_t sign = (x >> 16) & 0x8000;
  const uint32_t ax = x & 0x7fffffffu;
  // Normal half: rebias the exponent (127 -> 15), round the 13 dropped bits.
  const uint32_t normal = (ax - 0x38000000u + 0x0fffu + ((ax >> 13) & 1)) >> 13;
  // Subnormal half (|x| < 2^-14): adding 0.5f (ulp 2^-24) makes the FPU
  // round |x| to a multiple of 2^-24, nearest even; the low bits are the
  // half's mantissa (0x400 = smallest normal when it rounds up).
  float f;
  std::memcpy(&f, &ax, 4);
  const float g = f + 0.5f;
  uint32_t sub;
  std::memcpy(&sub, &g, 4);
  sub -= 0x3f000000u;
  uint32_t r = ax < 0x38800000u ? sub : normal;
  r = ax >= 0x477ff000u ? 0x7c00u : r;                         // >= 65520 -> inf
  r = ax > 0x7f800000u ? (0x7e00u | ((ax >> 13) & 0x3ffu)) : r;  // NaN stays (quiet) NaN
  return static_cast<uint16_t>(sign | r);
}

inline uint16_t f32_to_bf16(uint32_t x) {
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

// ------------------------------------------------------------ stage kernels

inline int32_t ld_i32(const uint8_t* b) {
  int32_t v;
  std::memcpy(&v, b, 4);
  return v;
}

// FORMAT.md affine: t = q - sign(q)*theta; w = t*scale; w = w + offset.
// Separate statements, compiled with -ffp-contract=off: no FMA.
inline float dequant(int32_t s, float theta, float scale) {
  const float q = static_cast<float>(s);
  // sign(q) * theta, with the sign taken from the integer (same value; keeps
  // the loop free of float compares so that it vectorises).
  const float st = static_cast<float>((s > 0) - (s < 0)) * theta;
  const float t = q - st;
  const float w = t * scale;
  return w;
}

// Affine over elements [i0, i1): src holds int32 symbols for those elements,
// dst receives floats (src and dst may be the same memory).
void affine_range(const Plan& p, const uint8_t* src, uint8_t* dst, uint64_t i0, uint64_t i1) {
  const float theta = p.theta;
  const float* scale = p.scale.data();
  const float* off = p.has_offset ? p.offset.data() : nullptr;
  uint64_t i = i0;
  if (p.inner == 1) {
    uint64_t c = i0 % p.channels;
    while (i < i1) {
      const uint64_t run = std::min<uint64_t>(p.channels - c, i1 - i);
      const uint8_t* s = src + 4 * (i - i0);
      uint8_t* d = dst + 4 * (i - i0);
      for (uint64_t t = 0; t < run; ++t) {
        float w = dequant(ld_i32(s + 4 * t), theta, scale[c + t]);
        if (off) w = w + off[c + t];
        std::memcpy(d + 4 * t, &w, 4);
      }
      i += run;
      c = 0;
    }
    return;
  }
  uint64_t k = i0 % p.inner;
  uint64_t c = (i0 / p.inner) % p.channels;
  while (i < i1) {
    const uint64_t run = std::min<uint64_t>(p.inner - k, i1 - i);
    const float sc = scale[c];
    const uint8_t* s = src + 4 * (i - i0);
    uint8_t* d = dst + 4 * (i - i0);
    if (off) {
      const float o = off[c];
      for (uint64_t t = 0; t < run; ++t) {
        float w = dequant(ld_i32(s + 4 * t), theta, sc);
        w = w + o;
        std::memcpy(d + 4 * t, &w, 4);
      }
    } else {
      for (uint64_t t = 0; t < run; ++t) {
        const float w = dequant(ld_i32(s + 4 * t), theta, sc);
        std::memcpy(d + 4 * t, &w, 4);
      }
    }
    i += run;
    k = 0;
    if (++c == p.channels) c = 0;
  }
}

// Exponent over elements [i0, i1) of the float32 buffer buf (in place).
// One multiplication by an exact power of two per element.
void exponent_range(const Plan& p, uint8_t* buf, uint64_t i0, uint64_t i1) {
  if (!p.has_exponent || i1 <= i0) return;
  const float* mult = p.e_mult.data();
  const uint64_t inner = p.e_inner;  // >= 1: coded = outer*groups*inner > 0 here
  uint64_t k = i0 % inner;
  uint64_t g = (i0 / inner) % p.e_groups;
  uint64_t i = i0;
  while (i < i1) {
    const uint64_t run = std::min<uint64_t>(inner - k, i1 - i);
    const float m = mult[g];
    uint8_t* d = buf + 4 * (i - i0);
    for (uint64_t t = 0; t < run; ++t) {
      float v;
      std::memcpy(&v, d + 4 * t, 4);
      v = v * m;
      std::memcpy(d + 4 * t, &v, 4);
    }
    i += run;
    k = 0;
    if (++g == p.e_groups) g = 0;
  }
}

void codebook_range(const Plan& p, const uint8_t* src, uint8_t* dst, uint64_t i0, uint64_t i1) {
  const float* values = p.codebook.data();
  const uint32_t size = static_cast<uint32_t>(p.codebook.size());
  const uint64_t n = i1 - i0;
  bool bad = false;
  for (uint64_t t = 0; t < n; ++t) {
    const uint32_t s = static_cast<uint32_t>(ld_i32(src + 4 * t));
    bad |= s >= size;
    const float w = values[s < size ? s : 0];
    std::memcpy(dst + 4 * t, &w, 4);
  }
  if (bad) {
    // Only reached on corrupt input; dst may alias src, so report generically.
    corrupt("codebook index outside [0, " + std::to_string(size) + ") near element " +
            std::to_string(i0));
  }
}

void dequant_range(const Plan& p, const uint8_t* src, uint8_t* dst, uint64_t i0, uint64_t i1) {
  if (p.kinds[1] == kAffine)
    affine_range(p, src, dst, i0, i1);
  else
    codebook_range(p, src, dst, i0, i1);
}

template <class T>
inline void store(uint8_t* out, uint64_t i, T v) {
  std::memcpy(out + sizeof(T) * i, &v, sizeof(T));
}

constexpr uint64_t kChunk = 4096;  // elements per pass: buffers stay in L1/L2

void execute_raw(const Plan& p, uint8_t* out) {
  const uint32_t eb = p.elem_bytes, rot = p.rotate, width = 8 * eb;
  std::vector<StreamDecoder> dec;
  dec.reserve(eb);
  for (uint32_t k = 0; k < eb; ++k)
    dec.emplace_back(p.planes[k], 0, "stage 1 (raw) plane " + std::to_string(k));
  uint8_t scratch[8][kChunk];
  const uint8_t* plane[8];
  const unsigned packed = packed_bits(p.dtype);
  for (uint64_t i = 0; i < p.numel; i += kChunk) {
    const uint64_t n = std::min(kChunk, p.numel - i);
    for (uint32_t k = 0; k < eb; ++k) plane[k] = dec[k].next_bytes(scratch[k], n);
    if (packed) {
      // kChunk is a multiple of every elements-per-byte count, so a chunk
      // starts a byte; each index is < 2^packed (checked at parse).
      const uint64_t per_byte = 8 / packed, first = i / per_byte;
      for (uint64_t t = 0; t < n; t += per_byte) {
        uint32_t b = 0;
        for (uint64_t e = 0; e < per_byte && t + e < n; ++e) b |= uint32_t(plane[0][t + e]) << (e * packed);
        out[first + t / per_byte] = static_cast<uint8_t>(b);
      }
    } else if (eb == 4) {
      for (uint64_t t = 0; t < n; ++t) {
        const uint32_t v = (static_cast<uint32_t>(plane[0][t]) << 24) |
                           (static_cast<uint32_t>(plane[1][t]) << 16) |
                           (static_cast<uint32_t>(plane[2][t]) << 8) | plane[3][t];
        store<uint32_t>(out, i + t, rot ? (v >> rot) | (v << (32 - rot)) : v);
      }
    } else if (eb == 2) {
      for (uint64_t t = 0; t < n; ++t) {
        const uint32_t v = (static_cast<uint32_t>(plane[0][t]) << 8) | plane[1][t];
        store<uint16_t>(out, i + t, static_cast<uint16_t>(rot ? (v >> rot) | (v << (16 - rot)) : v));
      }
    } else {  // 1 or 8 bytes: the general loop (rotate < width, checked at parse)
      for (uint64_t t = 0; t < n; ++t) {
        uint64_t v = 0;
        for (uint32_t k = 0; k < eb; ++k) v = (v << 8) | plane[k][t];
        if (rot) v = (v >> rot) | (v << (width - rot));
        if (eb == 1) {
          out[i + t] = static_cast<uint8_t>(v);
        } else {
          store<uint64_t>(out, i + t, v);
        }
      }
    }
  }
  for (auto& d : dec) d.finish();
}

// ------------------------------------------------------------ transform

constexpr uint64_t kCoefBlock = 1 << 14;  // coefficients decoded per block (rows of C)
constexpr uint32_t kColTile = 256;        // output columns per accumulator tile (1 KiB)

// Stores acc[0..n) as output elements (r, j0..j0+n) in the plan's layout and dtype.
void emit_tile(const Plan& p, uint8_t* out, uint64_t r, uint32_t j0, uint32_t n, const float* acc) {
  // layout 0: (r, j) -> r*cols + j; layout 1: (r, j) -> j*rows + r. Both < numel.
  const uint64_t first = p.layout == 0 ? r * p.cols + j0 : uint64_t(j0) * p.rows + r;
  const uint64_t stride = p.layout == 0 ? 1 : p.rows;
  uint32_t bits;
  for (uint32_t t = 0; t < n; ++t) {
    const uint64_t at = first + t * stride;
    std::memcpy(&bits, &acc[t], 4);
    if (p.dtype == kFloat32)
      store<uint32_t>(out, at, bits);
    else if (p.dtype == kFloat16)
      store<uint16_t>(out, at, f32_to_f16(bits));
    else
      store<uint16_t>(out, at, f32_to_bf16(bits));
  }
}

// entropy -> affine -> transform [-> cast]. Coefficient rows are decoded a
// block at a time; each output element is computed exactly as FORMAT.md says:
// acc = 0; acc = acc + C[r,i]*B[i,j] for i = 0..k-1 (product and sum rounded
// separately: the library is built with -ffp-contract=off); acc = acc + mean[j].
// The loops run row block, column tile, row, i, j: the per-element order is
// unchanged and the innermost loop over j vectorises without reassociating.
void execute_transform(const Plan& p, uint8_t* out) {
  const uint32_t k = p.k, cols = p.cols;
  const uint64_t block_rows = std::max<uint64_t>(1, kCoefBlock / k);
  const uint64_t block = std::min<uint64_t>(block_rows, p.rows) * k;
  std::vector<int32_t> sym(block);
  std::vector<float> coef(block);
  const float* basis = p.basis.data();
  const float* mean = p.has_mean ? p.mean.data() : nullptr;
  alignas(64) float acc[kColTile];
  StreamDecoder dec(p.symbols, p.symbol_offset, "stage 1 (entropy)");
  for (uint64_t r0 = 0; r0 < p.rows; r0 += block_rows) {
    const uint64_t nr = std::min(block_rows, p.rows - r0);
    const uint64_t n = nr * k;
    dec.next(sym.data(), n);
    try {
      affine_range(p, reinterpret_cast<const uint8_t*>(sym.data()),
                   reinterpret_cast<uint8_t*>(coef.data()), r0 * k, r0 * k + n);
      exponent_range(p, reinterpret_cast<uint8_t*>(coef.data()), r0 * k, r0 * k + n);
    } catch (const Error& e) {
      corrupt(std::string("stage 2 (affine): ") + e.what());
    }
    // Column tile outside the block's rows: the basis columns of one tile
    // (k x kColTile floats) stay in cache for every row of the block.
    for (uint32_t j0 = 0; j0 < cols; j0 += kColTile) {
      const uint32_t nj = std::min(kColTile, cols - j0);
      for (uint64_t r = 0; r < nr; ++r) {
        const float* c = coef.data() + r * k;
        for (uint32_t t = 0; t < nj; ++t) acc[t] = 0.0f;
        for (uint32_t i = 0; i < k; ++i) {
          const float ci = c[i];
          const float* b = basis + size_t(i) * cols + j0;
          for (uint32_t t = 0; t < nj; ++t) {
            const float prod = ci * b[t];
            acc[t] = acc[t] + prod;
          }
        }
        if (mean)
          for (uint32_t t = 0; t < nj; ++t) acc[t] = acc[t] + mean[j0 + t];
        emit_tile(p, out, r0 + r, j0, nj, acc);
      }
    }
  }
  dec.finish();
}

// The stages after the symbols, for elements [i, i + n) (n <= kChunk):
// affine|codebook, exponent, and the store or cast into out.
void emit_symbols(const Plan& p, const int32_t* sym, uint8_t* out, uint64_t i, uint64_t n) {
  float val[kChunk];
  uint8_t* v8 = reinterpret_cast<uint8_t*>(val);
  uint8_t* dst = p.dtype == kFloat32 ? out + 4 * i : v8;
  try {
    dequant_range(p, reinterpret_cast<const uint8_t*>(sym), dst, i, i + n);
    exponent_range(p, dst, i, i + n);
  } catch (const Error& e) {
    corrupt(std::string("stage 2 (") + stage_name(p.kinds[1]) + "): " + e.what());
  }
  if (p.dtype == kFloat16) {
    for (uint64_t t = 0; t < n; ++t) {
      uint32_t bits;
      std::memcpy(&bits, &val[t], 4);
      store<uint16_t>(out, i + t, f32_to_f16(bits));
    }
  } else if (p.dtype == kBFloat16) {
    for (uint64_t t = 0; t < n; ++t) {
      uint32_t bits;
      std::memcpy(&bits, &val[t], 4);
      store<uint16_t>(out, i + t, f32_to_bf16(bits));
    }
  }
}

// expand -> affine [-> exponent] [-> cast]. Blocks are decoded a slice at a
// time: `c` consecutive blocks along inner (same outer and block position j),
// whose elements at block position t are the contiguous flat range
// (o*n + j*block + t)*inner + [i0, i0 + c). With inner = 1 a slice is instead
// a run of consecutive blocks, which are contiguous in the output.
void execute_expand(const Plan& p, uint8_t* out) {
  const uint32_t B = p.x_block;
  const uint64_t per_row = p.x_n == 0 ? 0 : (p.x_n - 1) / B + 1;
  const uint64_t slice = std::max<uint64_t>(1, kChunk / B);  // blocks per slice: slice*B <= kChunk
  StreamDecoder modes(p.x_modes, 0, "stage 1 (expand) modes");
  StreamDecoder mags(p.x_magnitudes, 1, "stage 1 (expand) magnitudes");
  StreamDecoder signs(p.x_signs, 0, "stage 1 (expand) signs");
  StreamDecoder kept(p.x_kept, p.kept_offset, "stage 1 (expand) kept");
  if (p.coded == 0) return;  // outer or inner may be anything when the tensor is empty
  std::vector<uint8_t> mode(slice), sgn(slice * B);
  std::vector<int32_t> mag(slice), kv(slice * B), sym(slice * B), row(kChunk);
  // Decodes the next c blocks of lengths len(b) into sym, block after block.
  auto decode_blocks = [&](uint64_t c, auto len) {
    modes.next(mode.data(), c);
    uint64_t nu = 0, nue = 0, nke = 0;
    for (uint64_t b = 0; b < c; ++b) {
      if (mode[b] == kUnify) {
        ++nu;
        nue += len(b);
      } else if (mode[b] == kKeep) {
        nke += len(b);
      }
    }
    mags.next(mag.data(), nu);
    signs.next(sgn.data(), nue);
    kept.next(kv.data(), nke);
    uint64_t ui = 0, si = 0, ki = 0, at = 0;
    for (uint64_t b = 0; b < c; ++b) {
      const uint64_t l = len(b);
      if (mode[b] == kUnify) {
        const int32_t m = mag[ui++];
        for (uint64_t t = 0; t < l; ++t) sym[at + t] = sgn[si++] ? -m : m;
      } else if (mode[b] == kKeep) {
        for (uint64_t t = 0; t < l; ++t) sym[at + t] = kv[ki++];
      } else {
        for (uint64_t t = 0; t < l; ++t) sym[at + t] = 0;
      }
      at += l;
    }
    return at;
  };
  if (p.x_inner == 1) {
    uint64_t i = 0, j = 0;  // output position, block position along n
    const uint64_t nblocks = p.x_outer * per_row;
    for (uint64_t b0 = 0; b0 < nblocks; b0 += slice) {
      const uint64_t c = std::min(slice, nblocks - b0);
      const uint64_t j0 = j;
      const uint64_t n = decode_blocks(c, [&](uint64_t b) {
        const uint64_t jb = (j0 + b) % per_row;
        return std::min<uint64_t>(B, p.x_n - jb * B);
      });
      j = (j0 + c) % per_row;
      for (uint64_t e = 0; e < n; e += kChunk) {
        const uint64_t m = std::min<uint64_t>(kChunk, n - e);
        emit_symbols(p, sym.data() + e, out, i + e, m);
      }
      i += n;
    }
  } else {
    for (uint64_t o = 0; o < p.x_outer; ++o) {
      for (uint64_t j = 0; j < per_row; ++j) {
        const uint64_t len = std::min<uint64_t>(B, p.x_n - j * B);
        for (uint64_t i0 = 0; i0 < p.x_inner; i0 += slice) {
          const uint64_t c = std::min(slice, p.x_inner - i0);
          decode_blocks(c, [&](uint64_t) { return len; });
          for (uint64_t t = 0; t < len; ++t) {
            for (uint64_t b = 0; b < c; ++b) row[b] = sym[b * len + t];  // gather position t of each block
            emit_symbols(p, row.data(), out, ((o * p.x_n) + j * B + t) * p.x_inner + i0, c);
          }
        }
      }
    }
  }
  modes.finish();
  mags.finish();
  signs.finish();
  kept.finish();
}

}  // namespace

Declared check_declared(int64_t dtype, const int64_t* dims, int64_t ndim, uint64_t max_decoded_bytes) {
  Declared d;
  if (dtype < 0 || dtype > 255 || elem_size(static_cast<int>(dtype)) == 0)
    corrupt("the graph declares dtype " + std::to_string(dtype) + "; valid: " + kValidDtypes);
  if (ndim < 0 || ndim > L2C_MAX_DIMS)
    corrupt("the graph declares a shape of " + std::to_string(ndim) + " dims; valid: 0 to 8");
  if (ndim && !dims) fail(L2C_E_ARGUMENT, "dims is NULL");
  uint64_t numel = 1;
  bool overflow = false;
  for (int64_t i = 0; i < ndim; ++i) {
    if (dims[i] < 0) corrupt("the graph declares shape " + dims_str(dims, ndim) + " with a negative dim");
    d.dims[i] = static_cast<uint64_t>(dims[i]);
    overflow |= d.dims[i] > kMaxNumel || mul_overflow(numel, d.dims[i], &numel);
  }
  if (overflow || numel > kMaxNumel)
    corrupt("the graph declares shape " + dims_str(dims, ndim) + ", over 2^40 elements");
  d.dtype = static_cast<int>(dtype);
  d.ndim = static_cast<int>(ndim);
  d.out_bytes = tensor_bytes(d.dtype, numel);
  if (max_decoded_bytes && d.out_bytes > max_decoded_bytes)
    fail(L2C_E_LIMIT, "the graph declares " + std::to_string(d.out_bytes) + " decoded bytes " + dims_str(dims, ndim) +
                          ", above the limit of " + std::to_string(max_decoded_bytes) + " (max_decoded_bytes)");
  return d;
}

unsigned packed_bits(int dtype) {
  switch (dtype) {
    case kUint4: case kInt4: case kFloat4E2M1: return 4;
    case kUint2: case kInt2: return 2;
    default: return 0;
  }
}

uint64_t tensor_bytes(int dtype, uint64_t numel) {
  const unsigned bits = packed_bits(dtype);
  return bits ? (numel * bits + 7) / 8 : numel * elem_size(dtype);
}

const char* dtype_name(int dtype) {
  switch (dtype) {
    case kFloat32: return "float32";
    case kFloat16: return "float16";
    case kBFloat16: return "bfloat16";
    case kUint8: return "uint8";
    case kInt8: return "int8";
    case kUint16: return "uint16";
    case kInt16: return "int16";
    case kInt32: return "int32";
    case kInt64: return "int64";
    case kBool: return "bool";
    case kDouble: return "double";
    case kUint32: return "uint32";
    case kUint64: return "uint64";
    case kFloat8E4M3FN: return "float8e4m3fn";
    case kFloat8E4M3FNUZ: return "float8e4m3fnuz";
    case kFloat8E5M2: return "float8e5m2";
    case kFloat8E5M2FNUZ: return "float8e5m2fnuz";
    case kUint4: return "uint4";
    case kInt4: return "int4";
    case kFloat4E2M1: return "float4e2m1";
    case kUint2: return "uint2";
    case kInt2: return "int2";
    default: return "unknown";
  }
}

namespace {

// The checks before any byte past the magic is read: a buffer, and room for magic and CRC.
void check_frame(const uint8_t* data, size_t size) {
  if (!data && size) fail(L2C_E_ARGUMENT, "payload is NULL");
  if (size < 4 + 4) {
    if (size < 4 || std::memcmp(data, "L2CP", 4) != 0) fail(L2C_E_VERSION, "bad magic (not an onnx_l2c payload)");
    corrupt("payload truncated: " + std::to_string(size) + " bytes");
  }
}

}  // namespace

void verify_payload_crc(const uint8_t* data, size_t size) {
  check_frame(data, size);
  const bool magic_ok = std::memcmp(data, "L2CP", 4) == 0;
  const size_t body = size - 4;
  const uint32_t stored = static_cast<uint32_t>(data[body]) | (static_cast<uint32_t>(data[body + 1]) << 8) |
                          (static_cast<uint32_t>(data[body + 2]) << 16) |
                          (static_cast<uint32_t>(data[body + 3]) << 24);
  const uint32_t computed = crc32(data, body);
  if (stored != computed) {
    if (!magic_ok) fail(L2C_E_VERSION, "bad magic (not an onnx_l2c payload)");
    corrupt("CRC mismatch (stored " + hex32(stored) + ", computed " + hex32(computed) + ")");
  }
}

void parse_payload(const uint8_t* data, size_t size, Plan* p, uint64_t out_bytes, bool exact_out_bytes,
                   const Declared* declared, bool verify_crc) {
  if (verify_crc) {
    verify_payload_crc(data, size);
  } else {
    check_frame(data, size);
  }
  const bool magic_ok = std::memcmp(data, "L2CP", 4) == 0;
  const size_t body = size - 4;
  Reader r(data, body);
  const char* hw = "header";
  r.take(4, hw);
  if (!magic_ok) fail(L2C_E_VERSION, "bad magic (not an onnx_l2c payload)");
  const uint16_t version = r.u16(hw);
  if (version < kMinFormatVersion || version > kMaxFormatVersion)
    fail(L2C_E_VERSION, "unsupported format version " + std::to_string(version) +
                            " (this library reads 1 to 5)");
  p->version = version;
  p->dtype = r.u8(hw);
  if (elem_size(p->dtype) == 0)
    corrupt("unsupported dtype " + std::to_string(p->dtype) + " (valid: " + kValidDtypes + ")");
  if (!is_float_dtype(p->dtype) && version < kRawDtypesFormatVersion)
    corrupt(std::string("dtype ") + dtype_name(p->dtype) + " in a version " + std::to_string(version) +
            " payload (needs version 5)");
  p->ndim = r.u8(hw);
  if (p->ndim > L2C_MAX_DIMS) corrupt("ndim " + std::to_string(p->ndim) + " exceeds 8");
  uint64_t numel = 1;
  bool overflow = false;
  for (int i = 0; i < p->ndim; ++i) {
    p->dims[i] = r.u64(hw);
    overflow |= p->dims[i] > kMaxNumel || mul_overflow(numel, p->dims[i], &numel);
  }
  if (overflow || numel > kMaxNumel)
    corrupt("declared shape " + shape_str(*p) + " exceeds 2^40 elements");
  p->numel = numel;
  p->coded = numel;
  p->out_bytes = tensor_bytes(p->dtype, numel);
  if (declared && (declared->dtype != p->dtype || declared->ndim != p->ndim ||
                   !std::equal(p->dims, p->dims + p->ndim, declared->dims)))
    corrupt(std::string("the graph declares ") + dtype_name(declared->dtype) + " " +
            dims_str(declared->dims, declared->ndim) + " but the payload holds " + dtype_name(p->dtype) + " " +
            shape_str(*p));
  if (exact_out_bytes && p->out_bytes != out_bytes)
    fail(L2C_E_ARGUMENT, "output buffer has " + std::to_string(out_bytes) + " bytes, the tensor needs " +
                             std::to_string(p->out_bytes));
  if (!exact_out_bytes && out_bytes && p->out_bytes > out_bytes)
    fail(L2C_E_LIMIT, "the payload declares " + std::to_string(p->out_bytes) + " decoded bytes " +
                          shape_str(*p) + ", above the limit of " + std::to_string(out_bytes) +
                          " (max_decoded_bytes)");
  const int nstages = r.u8(hw);
  r.reserved(3, hw);
  if (nstages < 1 || nstages > 8) corrupt("nstages " + std::to_string(nstages) + " not in 1..8");

  // Frame every stage first: a transform stage fixes the element count of
  // the stages before it (rows*k instead of numel), so its body is parsed
  // before theirs.
  struct Framed {
    uint8_t kind;
    const uint8_t* body;
    uint32_t size;
    std::string what;
  };
  std::vector<Framed> stages;
  for (int k = 1; k <= nstages; ++k) {
    const std::string where = "stage " + std::to_string(k);
    const uint8_t kind = r.u8(where.c_str());
    const std::string what = "stage " + std::to_string(k) + " (" + stage_name(kind) + ")";
    r.reserved(3, what.c_str());
    const uint32_t body_size = r.u32(what.c_str());
    if (body_size > r.remaining())
      corrupt(what + ": body truncated: needs " + std::to_string(body_size) + " bytes, " +
              std::to_string(r.remaining()) + " remain");
    stages.push_back({kind, r.take(body_size, what.c_str()), body_size, what});
  }
  for (const Framed& st : stages) {
    if (st.kind != kTransform) continue;
    if (p->version < kTransformFormatVersion)
      fail(L2C_E_VERSION, st.what + ": the transform stage needs format version " +
                              std::to_string(kTransformFormatVersion) + ", the payload is version " +
                              std::to_string(p->version));
    if (p->has_transform) corrupt(st.what + ": more than one transform stage");
    Reader b(st.body, st.size);
    parse_transform(b, st.what, p);
    if (b.remaining())
      corrupt(st.what + ": " + std::to_string(b.remaining()) + " unused bytes at the end of the body");
  }
  Buf buf = kNone;
  for (const Framed& st : stages) {
    Reader b(st.body, st.size);
    parse_stage(b, st.kind, st.what, p, &buf);
    if (b.remaining())
      corrupt(st.what + ": " + std::to_string(b.remaining()) + " unused bytes at the end of the body");
    p->kinds.push_back(st.kind);
  }
  const bool complete = buf == kDtype || (buf == kF32 && p->dtype == kFloat32);
  if (!complete) {
    std::string seq;
    for (uint8_t kd : p->kinds) seq += std::string(seq.empty() ? "" : ", ") + stage_name(kd);
    corrupt("stage sequence [" + seq + "] does not produce a " + dtype_name(p->dtype) + " tensor");
  }
  if (r.remaining())
    corrupt(std::to_string(r.remaining()) + " trailing bytes after the last stage");
}

void execute(const Plan& p, void* out_v) {
  uint8_t* out = static_cast<uint8_t*>(out_v);
  if (p.kinds[0] == kRaw) {
    execute_raw(p, out);
    return;
  }
  if (p.has_transform) {
    execute_transform(p, out);
    return;
  }
  if (p.has_expand) {
    execute_expand(p, out);
    return;
  }
  // entropy -> affine|codebook [-> exponent] [-> cast], chunk by chunk.
  StreamDecoder dec(p.symbols, p.symbol_offset, "stage 1 (entropy)");
  int32_t sym[kChunk];
  for (uint64_t i = 0; i < p.numel; i += kChunk) {
    const uint64_t n = std::min(kChunk, p.numel - i);
    dec.next(sym, n);
    emit_symbols(p, sym, out, i, n);
  }
  dec.finish();
}

}  // namespace l2c
