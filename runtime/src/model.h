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

// Frees a tensor buffer the way tensor_buffer() allocated it: mapped
// (mapped_bytes > 0) or from operator new.
struct BufferFree {
  size_t mapped_bytes = 0;
  void operator()(uint8_t* p) const;
};
using Buffer = std::unique_ptr<uint8_t[], BufferFree>;

// n bytes (at least one), kTensorAlign-aligned. On Linux (not under ASan) a
// buffer of 2 MiB or more is its own mapping, 2 MiB-aligned and advised for transparent huge
// pages over its whole 2 MiB blocks: decoding writes every byte of fresh
// memory, and with 4 KiB pages the kernel's page faults took a fifth of a
// lossless decode's time.
Buffer tensor_buffer(uint64_t n);

struct Tensor {
  std::string name;
  Declared declared;
  int64_t dims[L2C_MAX_DIMS] = {};
  uint64_t offset = 0, length = 0;  // its payload in the sidecar
  Buffer data;                      // declared.out_bytes decoded bytes (tensor_buffer)
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
