// Stream coding (docs/FORMAT.md, "Stream"): constant / stored / rANS.
#ifndef ONNX_L2C_STREAM_H
#define ONNX_L2C_STREAM_H

#include <cstdint>
#include <string>
#include <vector>

#include "common.h"

namespace l2c {

enum StreamMode : uint8_t { kConstant = 0, kStored = 1, kRans = 2 };

constexpr uint32_t kRansL = 1u << 16;
// Largest alphabet of any stream mode: indices fit 16 bits, so an index plus
// a stage's offset (or +1 for expand magnitudes) never overflows int32.
constexpr uint32_t kMaxAlphabet = 65536;
constexpr size_t kStreamHeaderSize = 16;
// rANS streams up to this scale decode through a 4-byte-per-slot table that
// stays in L1; the encoder keeps byte planes of raw payloads at or below it.
constexpr uint32_t kCompactScaleBits = 12;

// A parsed and validated stream. Points into the payload; decode_stream()
// turns it into indices.
struct Stream {
  uint8_t mode = 0;
  uint8_t scale_bits = 0;
  uint8_t lanes = 0;
  uint64_t count = 0;
  uint32_t alphabet = 0;
  // stored: the index bytes; rANS: state[lanes] followed by the words.
  const uint8_t* data = nullptr;
  size_t data_size = 0;
  // rANS: present symbols (increasing) and their frequencies.
  std::vector<uint32_t> symbols;
  std::vector<uint32_t> freqs;
  uint32_t max_index = 0;  // largest index the stream can produce
};

// Parses one stream at the reader's position (advancing it past the stream)
// and validates everything that can be checked without decoding: header
// fields, table, sizes, that `count` equals expected_count, and that the
// body is large enough to hold `count` symbols. `what` prefixes messages.
void parse_stream(Reader& r, uint64_t expected_count, const std::string& what, Stream* s);

// Incremental decoder of a parsed stream: next() produces the following n
// indices as out[i] = index + offset (the caller guarantees that
// max_index + offset fits T), finish() checks that the stream was consumed
// exactly (all indices produced, rANS final states == L, no words left).
class StreamDecoder {
 public:
  StreamDecoder(const Stream& s, int32_t offset, const std::string& what);
  template <class T>
  void next(T* out, uint64_t n);
  // The next n indices as bytes (alphabet <= 256, offset 0): a stored
  // stream's own bytes, range-checked, without a copy; otherwise decoded
  // into scratch (room for n).
  const uint8_t* next_bytes(uint8_t* scratch, uint64_t n);
  void finish() const;

 private:
  const Stream& s_;
  int32_t offset_;
  std::string what_;
  void check_stored(const uint8_t* d, uint64_t n) const;
  template <class Slot, class T>
  void next_rans(const Slot* tab, T* out, uint64_t n);

  std::vector<uint64_t> tab_;      // rANS: the wide table (stream.cc, slot_value)
  std::vector<uint32_t> compact_;  // rANS: the compact table, where it holds the stream
  uint32_t x_[32] = {};
  const uint8_t* p_ = nullptr;
  const uint8_t* pe_ = nullptr;
  uint64_t pos_ = 0;
  uint32_t lane_ = 0;
};

// Whole-stream convenience wrappers.
void decode_stream(const Stream& s, int32_t* out, int32_t offset, const std::string& what);
void decode_stream(const Stream& s, uint8_t* out, const std::string& what);

// Encodes indices in [0, alphabet) as one stream; appends to out.
void encode_stream(const int32_t* indices, uint64_t count, uint32_t alphabet,
                   uint32_t max_scale_bits, std::vector<uint8_t>* out);

}  // namespace l2c

#endif
