// libFuzzer harness for the payload parser and decoder (the C API every load
// path runs: l2c_payload_info_limit, l2c_decode, l2c_decode_declared).
//
// Built by scripts/fuzz.sh with -fsanitize=fuzzer,address,undefined. Two
// things steer the fuzzer past the checks random bytes never satisfy:
// the harness rewrites the trailing CRC-32 of every input before decoding,
// and LLVMFuzzerCustomMutator edits the payload's structure (header dims,
// stage kinds and order, the integer fields of stage bodies and of their
// streams, body sizes) instead of only flipping bytes. Random byte flips
// never reached the expand stage's magnitude bug; setting a stream's
// alphabet field to 2^31 does in one step.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "common.h"
#include "onnx_l2c.h"
#include "stream.h"

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

namespace {

// Decoded bytes one input may allocate: large enough for every golden and
// seed, small enough that ASan never runs out of memory.
constexpr uint64_t kBudget = uint64_t(64) << 20;
constexpr size_t kHeader = 4 + 2 + 1 + 1;  // magic, version, dtype, ndim (then dims, nstages)

uint32_t rd32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

void wr32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}

void wr64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
}

void fix_crc(std::vector<uint8_t>& p) {
  if (p.size() >= 8) wr32(p.data() + p.size() - 4, l2c::crc32(p.data(), p.size() - 4));
}

// Where the stages start (after header and dims), or 0 when the header is cut.
size_t stages_at(const uint8_t* d, size_t n) {
  if (n < kHeader) return 0;
  const size_t at = kHeader + 8 * size_t(d[7] > 8 ? 8 : d[7]) + 4;  // + nstages:u8 reserved:u8[3]
  return at <= n ? at : 0;
}

struct Frame {
  size_t at;    // offset of the stage header
  size_t body;  // offset of its body
  size_t size;  // body bytes (clamped to what is there)
};

std::vector<Frame> frames(const uint8_t* d, size_t n) {
  std::vector<Frame> out;
  size_t at = stages_at(d, n);
  if (!at) return out;
  const size_t end = n >= 4 ? n - 4 : 0;  // the CRC
  while (at + 8 <= end && out.size() < 8) {
    const size_t body = at + 8;
    size_t size = rd32(d + at + 4);
    if (size > end - body) size = end - body;
    out.push_back({at, body, size});
    at = body + size;
  }
  return out;
}

uint64_t interesting(uint32_t r) {
  static const uint64_t values[] = {0,          1,          2,          3,          4,          7,
                                    8,          255,        256,        257,        4096,       65535,
                                    65536,      65537,      1u << 24,   (1u << 24) + 1, 0x7FFFFFFF,
                                    0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, uint64_t(1) << 32,
                                    uint64_t(1) << 40, (uint64_t(1) << 40) + 1, ~uint64_t(0)};
  return values[r % (sizeof values / sizeof values[0])];
}

// The streams inside a stage body: every offset where a whole stream parses
// (mode, table and data consistent with its own count), as [start, end).
std::vector<std::pair<size_t, size_t>> streams_in(const uint8_t* body, size_t size) {
  std::vector<std::pair<size_t, size_t>> out;
  for (size_t at = 0; at + 16 <= size; ++at) {
    if (body[at] > 2 || body[at + 3] != 0) continue;  // mode 0..2, reserved 0
    uint64_t count = 0;
    for (int i = 0; i < 8; ++i) count |= uint64_t(body[at + 4 + i]) << (8 * i);
    try {
      l2c::Reader r(body + at, size - at);
      l2c::Stream st;
      l2c::parse_stream(r, count, "stream", &st);
      out.push_back({at, at + r.pos()});
      at += r.pos() - 1;
    } catch (const l2c::Error&) {
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> p(data, data + size);
  fix_crc(p);
  char err[256];
  int32_t dtype = 0, ndim = 0;
  int64_t dims[L2C_MAX_DIMS] = {};
  uint64_t bytes = 0;
  if (l2c_payload_info_limit(p.data(), p.size(), kBudget, &dtype, &ndim, dims, &bytes, err, sizeof err) != L2C_OK)
    return 0;
  std::unique_ptr<uint8_t[]> buffer(new uint8_t[bytes ? bytes : 1]);  // not zeroed: decode writes it all
  uint8_t* out = buffer.get();
  const int plain = l2c_decode(p.data(), p.size(), out, bytes, err, sizeof err);
  // The declared path must agree with the plain one on every payload.
  const int declared =
      l2c_decode_declared(p.data(), p.size(), dtype, dims, ndim, kBudget, out, bytes, err, sizeof err);
  if ((plain == L2C_OK) != (declared == L2C_OK)) __builtin_trap();
  // A declaration of another shape is refused before the stages are read.
  if (ndim > 0 && dims[0] > 1) {
    dims[0] -= 1;
    if (l2c_decode_declared(p.data(), p.size(), dtype, dims, ndim, kBudget, out, bytes, err, sizeof err) ==
        L2C_OK)
      __builtin_trap();
  }
  return 0;
}

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  uint32_t r = seed * 2654435761u + 1;
  auto next = [&r] {
    r ^= r << 13;
    r ^= r >> 17;
    r ^= r << 5;
    return r;
  };
  std::vector<Frame> fs = frames(data, size);
  const uint32_t choice = next() % 9;
  if (fs.empty() || choice == 0) return LLVMFuzzerMutate(data, size, max_size);
  const Frame f = fs[next() % fs.size()];
  switch (choice) {
    case 1: {  // an integer field of a stage body (stream counts, alphabets, geometry)
      if (f.size < 4) break;
      const size_t at = f.body + 4 * (next() % (f.size / 4));
      const uint64_t v = interesting(next());
      if (at + 8 <= f.body + f.size && (next() & 1)) wr64(data + at, v);
      else wr32(data + at, uint32_t(v));
      break;
    }
    case 2:  // a stage kind (1..8 and one past)
      data[f.at] = uint8_t(1 + next() % 9);
      break;
    case 3: {  // the header: its dtype (every stage under every dtype), its version, or a dim
      static const uint8_t kDtypes[] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13,
                                        16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 255};
      const uint32_t which = next() % 4;
      if (which == 0) {
        data[6] = kDtypes[next() % sizeof kDtypes];
      } else if (which == 1) {
        data[4] = uint8_t(1 + next() % 6);
        data[5] = 0;
      } else if (data[7] != 0 && data[7] <= 8) {
        wr64(data + kHeader + 8 * (next() % data[7]), interesting(next()));
      }
      break;
    }
    case 4: {  // swap two stages' headers and bodies: move one stage to the front
      if (fs.size() < 2 || f.at == fs[0].at) break;
      std::vector<uint8_t> moved(data + f.at, data + f.body + f.size);
      std::memmove(data + fs[0].at + moved.size(), data + fs[0].at, f.at - fs[0].at);
      std::memcpy(data + fs[0].at, moved.data(), moved.size());
      break;
    }
    case 5:  // a body size one off, or the stage count
      if (next() & 1) wr32(data + f.at + 4, rd32(data + f.at + 4) + (next() & 1 ? 1 : -1));
      else if (const size_t at = stages_at(data, size)) data[at - 4] = uint8_t(next() % 10);
      break;
    case 6:  // the stream-header bytes: mode, scale_bits, lanes
      if (f.size >= 8) data[f.body + next() % 8] = uint8_t(next() % 20);
      break;
    case 7: {  // one stream of a stage replaced by a constant stream of the same count and any alphabet
      const auto found = streams_in(data + f.body, f.size);
      if (found.empty()) break;
      const auto [start, end] = found[next() % found.size()];
      uint8_t constant[16] = {0, 0, 0, 0};
      std::memcpy(constant + 4, data + f.body + start + 4, 8);  // the count
      wr32(constant + 12, uint32_t(next() & 1 ? interesting(next()) : 1 + next() % 70000));
      const size_t cut = end - start;
      if (size - cut + 16 > max_size) break;
      const size_t from = f.body + end;
      std::memmove(data + f.body + start + 16, data + from, size - from);
      std::memcpy(data + f.body + start, constant, 16);
      wr32(data + f.at + 4, uint32_t(f.size - cut + 16));
      size = size - cut + 16;
      break;
    }
    default: {  // byte-level mutation inside one stage body, then its frame is fixed
      if (f.size == 0 || size - f.size + 1 > max_size) break;
      const size_t tail = size - (f.body + f.size);
      std::vector<uint8_t> rest(data + f.body + f.size, data + size);
      const size_t room = max_size - (size - f.size);
      const size_t body = LLVMFuzzerMutate(data + f.body, f.size, room);
      std::memcpy(data + f.body + body, rest.data(), tail);
      wr32(data + f.at + 4, uint32_t(body));
      size = f.body + body + tail;
      break;
    }
  }
  return size;  // the harness rewrites the CRC
}
