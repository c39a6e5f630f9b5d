// A whole compressed model through its sidecar index (model.cc).
#ifndef ONNX_L2C_MODEL_H
#define ONNX_L2C_MODEL_H

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "payload.h"

namespace l2c {

constexpr size_t kTensorAlign = 64;

struct AlignedFree {
  void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t(kTensorAlign)); }
};
using Buffer = std::unique_ptr<uint8_t[], AlignedFree>;

struct Tensor {
  std::string name;
  Declared declared;
  int64_t dims[L2C_MAX_DIMS] = {};
  uint64_t offset = 0, length = 0;  // its payload in the sidecar
  Buffer data;                      // declared.out_bytes decoded bytes, 64-byte aligned
};

struct Model {
  std::vector<uint8_t> plain;  // the plain graph: a serialized ONNX ModelProto
  std::vector<Tensor> tensors;
};

// max_decoded_bytes: 0 = the default budget (default_decode_limit of the
// payloads' bytes), UINT64_MAX = none. threads: 0 = one per core.
Model* open_model(const uint8_t* graph, size_t graph_size, const uint8_t* sidecar, size_t sidecar_size,
                  uint64_t max_decoded_bytes, int threads);
// sidecar_path NULL: graph_path + ".l2c".
Model* open_model_files(const char* graph_path, const char* sidecar_path, uint64_t max_decoded_bytes, int threads);

}  // namespace l2c

#endif
