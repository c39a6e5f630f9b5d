// libFuzzer harness for the sidecar index reader (l2c_model_open_memory: the
// plain graph's copy/insert operations, the tensor table, every payload).
//
// Input: u32 graph size, the model file's bytes, then the sidecar's bytes
// (runtime/fuzz/seeds_model). Built by scripts/fuzz.sh with
// -fsanitize=fuzzer,address,undefined. Before each run the harness makes the
// checks random bytes never satisfy pass again: the index's recorded graph
// size and CRC, and the trailer's CRC of the index, so the fuzzer reaches
// the operations and tensors behind them.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"
#include "onnx_l2c.h"

namespace {

constexpr uint64_t kBudget = uint64_t(64) << 20;
constexpr size_t kTrailer = 32;

uint64_t rd64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void wr32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}

void wr64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  const uint32_t n = uint32_t(data[0]) | (uint32_t(data[1]) << 8) | (uint32_t(data[2]) << 16) |
                     (uint32_t(data[3]) << 24);
  if (n > size - 4) return 0;
  const uint8_t* graph = data + 4;
  std::vector<uint8_t> side(data + 4 + n, data + size);
  if (side.size() >= kTrailer) {
    uint8_t* t = side.data() + side.size() - kTrailer;
    const uint64_t at = rd64(t + 8), len = rd64(t + 16);
    const uint64_t end = side.size() - kTrailer;
    if (at <= end && len == end - at) {
      if (len >= 24) {  // the index's graph size and CRC, then the index's own CRC
        wr64(side.data() + at + 8, n);
        wr32(side.data() + at + 16, l2c::crc32(graph, n));
      }
      wr32(t + 24, l2c::crc32(side.data() + at, static_cast<size_t>(len)));
    }
  }
  l2c_model* model = nullptr;
  char err[256];
  if (l2c_model_open_memory(graph, n, side.data(), side.size(), kBudget, 1, &model, err, sizeof err) == L2C_OK) {
    size_t graph_size = 0;
    const uint8_t* plain = l2c_model_graph(model, &graph_size);
    volatile uint8_t sink = graph_size ? plain[graph_size - 1] : 0;
    for (size_t i = 0; i < l2c_model_tensor_count(model); ++i) {
      void* bytes = nullptr;
      uint64_t nbytes = 0;
      l2c_model_tensor(model, i, nullptr, nullptr, nullptr, nullptr, &bytes, &nbytes);
      if (nbytes) sink = sink ^ static_cast<const uint8_t*>(bytes)[nbytes - 1];
    }
    (void)sink;
    l2c_model_close(model);
  }
  return 0;
}
