// Payload parsing and decoding (docs/FORMAT.md, "Payload").
#ifndef ONNX_L2C_PAYLOAD_H
#define ONNX_L2C_PAYLOAD_H

#include <cstdint>
#include <vector>

#include "stream.h"

namespace l2c {

enum StageKind : uint8_t { kEntropy = 1, kAffine = 2, kCodebook = 3, kCast = 4, kRaw = 5, kTransform = 6, kExponent = 7,
                          kExpand = 8 };
// ONNX TensorProto data types. The float types may hold any recipe; the others
// only the raw stage (lossless), and only in payloads of version 5 or later.
enum DType : int {
  kFloat32 = 1, kUint8 = 2, kInt8 = 3, kUint16 = 4, kInt16 = 5, kInt32 = 6, kInt64 = 7, kBool = 9,
  kFloat16 = 10, kDouble = 11, kUint32 = 12, kUint64 = 13, kBFloat16 = 16, kFloat8E4M3FN = 17,
  kFloat8E4M3FNUZ = 18, kFloat8E5M2 = 19, kFloat8E5M2FNUZ = 20, kUint4 = 21, kInt4 = 22, kFloat4E2M1 = 23,
  kUint2 = 25, kInt2 = 26
};

// Payload format versions this library reads: 1, 2 (adds the transform
// stage), 3 (adds the exponent stage), 4 (adds the expand stage) and 5 (adds
// the dtypes other than float32, float16 and bfloat16, raw stage only).
constexpr int kMinFormatVersion = 1;
constexpr int kMaxFormatVersion = 5;
constexpr int kRawDtypesFormatVersion = 5;
constexpr int kTransformFormatVersion = 2;
constexpr int kExponentFormatVersion = 3;
constexpr int kExpandFormatVersion = 4;
// Largest expand block (elements): bounds the decoder's per-slice buffers.
constexpr uint32_t kMaxExpandBlock = 256;
// Largest unified magnitude of an expand block (index + 1).
constexpr uint32_t kMaxExpandMagnitude = 65536;
// Expand block modes (the modes stream's indices).
enum ExpandMode : uint8_t { kPrune = 0, kUnify = 1, kKeep = 2 };
// Largest exponent stage (groups): bounds its table to 16 MiB of multipliers.
constexpr uint32_t kMaxExponentGroups = uint32_t(1) << 24;
constexpr uint32_t kMaxExponent = 31;
// Largest transform basis (k*cols values): bounds its memory to 64 MiB.
constexpr uint64_t kMaxTransformBasis = uint64_t(1) << 24;

// Default decode budget: a model's payloads may decode to at most
// max(kDecodeLimitFloor, kDecodeLimitRatio x their stored bytes) unless the
// caller sets max_decoded_bytes (the custom op: ONNX_L2C_MAX_DECODED_BYTES).
// Real models stay far below 1024x (the zoo: 4-20x); a few-byte payload that
// declares terabytes does not.
constexpr uint64_t kDecodeLimitFloor = uint64_t(256) << 20;
constexpr uint64_t kDecodeLimitRatio = 1024;
inline uint64_t default_decode_limit(uint64_t stored_bytes) {
  const uint64_t scaled = stored_bytes > (UINT64_MAX / kDecodeLimitRatio) ? UINT64_MAX
                                                                          : stored_bytes * kDecodeLimitRatio;
  return scaled > kDecodeLimitFloor ? scaled : kDecodeLimitFloor;
}

// A fully validated payload: everything but the data-dependent checks
// (rANS consumption, codebook index range) is verified by parse_payload.
struct Plan {
  int version = 0;
  int dtype = 0;
  int ndim = 0;
  uint64_t dims[L2C_MAX_DIMS] = {};
  uint64_t numel = 0;
  uint64_t out_bytes = 0;
  // Element count of the entropy and affine/codebook stages: numel, or
  // rows*k when a transform stage follows them.
  uint64_t coded = 0;
  std::vector<uint8_t> kinds;

  // entropy
  int32_t symbol_offset = 0;
  Stream symbols;
  // expand (in place of entropy): blocks of `x_block` consecutive positions
  // along the middle axis of an (x_outer, x_n, x_inner) layout, in block order
  // (outer, block, inner); each pruned (0), unified (+-magnitude) or kept.
  bool has_expand = false;
  uint64_t x_outer = 0, x_n = 0, x_inner = 0;
  uint32_t x_block = 0;
  int32_t kept_offset = 0;
  Stream x_modes, x_magnitudes, x_signs, x_kept;
  // affine
  uint64_t outer = 0, inner = 0;
  uint32_t channels = 0;
  float theta = 0;
  bool has_offset = false;
  std::vector<float> scale, offset;
  // exponent: element i of the affine output is multiplied by mult[(i / inner) % groups]
  bool has_exponent = false;
  uint64_t e_outer = 0, e_inner = 0;
  uint32_t e_groups = 0;
  std::vector<float> e_mult;  // 2^-e per group, exact
  // codebook
  std::vector<float> codebook;
  // raw
  uint32_t elem_bytes = 0, rotate = 0;
  Stream planes[8];  // most significant byte first
  // transform: out(r, j) = sum_i C[r*k + i] * basis[i*cols + j] (+ mean[j])
  bool has_transform = false;
  uint64_t rows = 0;
  uint32_t k = 0, cols = 0;
  uint8_t layout = 0;  // 0: (r, j) -> r*cols + j; 1: (r, j) -> j*rows + r
  bool has_mean = false;
  std::vector<float> basis, mean;  // basis: k*cols, row-major; mean: cols
};

// What a graph declares for a Decode output (the node's dtype and shape
// attributes), validated by check_declared: every load path (the custom op,
// and the fast loader and decompress through the C API) runs this one check.
struct Declared {
  int dtype = 0;
  int ndim = 0;
  uint64_t dims[L2C_MAX_DIMS] = {};
  uint64_t out_bytes = 0;
};

// Validates a declaration: a dtype this library decodes; 0..8 dims, each >= 0, at most
// 2^40 elements; with max_decoded_bytes > 0, at most that many bytes
// (L2C_E_LIMIT). Invalid declarations are L2C_E_CORRUPT.
Declared check_declared(int64_t dtype, const int64_t* dims, int64_t ndim, uint64_t max_decoded_bytes);

// Verifies the CRC, then parses and validates header and stages. Right
// after the header, before any stage is looked at (so this also bounds the
// parsing time, e.g. of counting expand blocks): with `declared`, a payload
// of any other dtype or shape is refused (L2C_E_CORRUPT); with
// exact_out_bytes, a tensor of any other size than out_bytes (L2C_E_ARGUMENT:
// the caller's buffer); otherwise, with out_bytes > 0, one larger than
// out_bytes (L2C_E_LIMIT: the caller's decode budget).
// verify_crc false: the caller checks the CRC itself (verify_payload_crc, e.g.
// on another thread while this one decodes) and discards the result if it fails.
void parse_payload(const uint8_t* data, size_t size, Plan* plan, uint64_t out_bytes = 0,
                   bool exact_out_bytes = false, const Declared* declared = nullptr, bool verify_crc = true);

// The checks parse_payload runs first: size, magic (when the CRC fails) and the CRC.
void verify_payload_crc(const uint8_t* data, size_t size);

// Decodes a parsed payload into out (plan.out_bytes bytes).
void execute(const Plan& plan, void* out);

const char* dtype_name(int dtype);
// Bits per element of the packed dtypes (4 or 2: several elements to a byte,
// the first in the low bits); 0 for every other dtype.
unsigned packed_bits(int dtype);
// Bytes of a decoded tensor of numel elements (numel <= 2^40: no overflow).
uint64_t tensor_bytes(int dtype, uint64_t numel);

}  // namespace l2c

#endif
