// open_compressed(): an onnxruntime C++ session of an onnx_l2c-compressed
// model at the original model's speed. Copy it into a program that loads
// compressed models; runtime/examples/load_model.cc and time_load.cc use it.
//
// onnx_l2c's C API (l2c_model_open) rebuilds the plain graph from the
// sidecar index and decodes every weight, in parallel; onnxruntime gets the
// weights through AddExternalInitializers and the graph as bytes, so it
// optimizes the original model (prepacking, layout transforms) and copies
// the weights into the session, after which the decoded model is released.
#ifndef ONNX_L2C_EXAMPLES_L2C_SESSION_H
#define ONNX_L2C_EXAMPLES_L2C_SESSION_H

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "onnx_l2c.h"

// Throws std::runtime_error with onnx_l2c's message (for instance "no index"
// for a model written before onnx_l2c 0.2: load that one with the custom op),
// or Ort::Exception. options gets the external initializers added; they point
// at memory released on return, so do not create another session with it.
inline Ort::Session open_compressed(Ort::Env& env, const std::string& path, Ort::SessionOptions& options) {
  l2c_model* opened = nullptr;
  char err[1024];
  if (l2c_model_open(path.c_str(), nullptr, 0, 0, &opened, err, sizeof err) != L2C_OK)
    throw std::runtime_error(std::string("l2c_model_open: ") + err);
  const std::unique_ptr<l2c_model, void (*)(l2c_model*)> model(opened, l2c_model_close);
  const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<std::string> names;
  std::vector<Ort::Value> values;
  for (size_t i = 0; i < l2c_model_tensor_count(model.get()); ++i) {
    const char* name = nullptr;
    int32_t dtype = 0, ndim = 0;
    const int64_t* dims = nullptr;
    void* data = nullptr;
    uint64_t nbytes = 0;
    l2c_model_tensor(model.get(), i, &name, &dtype, &ndim, &dims, &data, &nbytes);
    names.emplace_back(name);
    // no copy here: the value wraps the model's memory (onnxruntime copies it into the session)
    values.push_back(Ort::Value::CreateTensor(cpu, data, static_cast<size_t>(nbytes), dims,
                                              static_cast<size_t>(ndim),
                                              static_cast<ONNXTensorElementDataType>(dtype)));
  }
  options.AddExternalInitializers(names, values);
  size_t graph_size = 0;
  const uint8_t* graph = l2c_model_graph(model.get(), &graph_size);
  return Ort::Session(env, graph, graph_size, options);
}

#endif
