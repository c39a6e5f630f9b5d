// Load an onnx_l2c-compressed model with onnxruntime's C++ API, both ways:
//
//  1. zero-overhead (l2c_session.h): onnx_l2c's C API (l2c_model_open)
//     rebuilds the plain graph from the sidecar index and decodes every
//     weight; onnxruntime gets the weights through AddExternalInitializers
//     and the graph as bytes, so it optimizes the original model (original
//     speed);
//  2. custom op: register libonnx_l2c as a custom op library and open the
//     .onnx itself (weights decoded by Decode nodes at run time).
//
// Usage: load_model MODEL.onnx LIBONNX_L2C INPUT.f32 OUT_PREFIX D0 [D1 ...]
// runs both sessions on one float32 input of shape D0 x D1 x ... (the model's
// first input) and writes each session's first output as raw float32 to
// OUT_PREFIX.fast.f32 and OUT_PREFIX.custom_op.f32, with the session creation
// times on stdout. Built and run by tests/test_cpp_example.py.
#include <onnxruntime_cxx_api.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "l2c_session.h"

namespace {

std::vector<float> read_floats(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw std::runtime_error("cannot open " + path);
  const std::streamoff size = f.tellg();
  std::vector<float> data(static_cast<size_t>(size) / sizeof(float));
  f.seekg(0);
  f.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
  return data;
}

void write_output(Ort::Session& session, std::vector<float>& input, const std::vector<int64_t>& shape,
                  const std::string& path) {
  Ort::AllocatorWithDefaultOptions allocator;
  const std::string in_name = session.GetInputNameAllocated(0, allocator).get();
  const std::string out_name = session.GetOutputNameAllocated(0, allocator).get();
  const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  Ort::Value x = Ort::Value::CreateTensor<float>(cpu, input.data(), input.size(), shape.data(), shape.size());
  const char* in_names[] = {in_name.c_str()};
  const char* out_names[] = {out_name.c_str()};
  std::vector<Ort::Value> y = session.Run(Ort::RunOptions{nullptr}, in_names, &x, 1, out_names, 1);
  const size_t n = y[0].GetTensorTypeAndShapeInfo().GetElementCount();
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(y[0].GetTensorData<float>()), static_cast<std::streamsize>(n * sizeof(float)));
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 6) {
    std::cerr << "usage: load_model MODEL.onnx LIBONNX_L2C INPUT.f32 OUT_PREFIX D0 [D1 ...]\n";
    return 2;
  }
  const std::string model_path = argv[1], library = argv[2], prefix = argv[4];
  std::vector<float> input = read_floats(argv[3]);
  std::vector<int64_t> shape;
  for (int i = 5; i < argc; ++i) shape.push_back(std::stoll(argv[i]));
  try {
    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "onnx_l2c example");

    // 1. zero-overhead: the plain graph and the decoded weights from the C API.
    auto t0 = std::chrono::steady_clock::now();
    Ort::SessionOptions fast_options;
    Ort::Session fast = open_compressed(env, model_path, fast_options);
    std::cout << "fast: session created in " << seconds_since(t0) << " s\n";
    write_output(fast, input, shape, prefix + ".fast.f32");

    // 2. custom op: the .onnx as it is, with the Decode op registered.
    t0 = std::chrono::steady_clock::now();
    Ort::SessionOptions op_options;
    op_options.RegisterCustomOpsLibrary(library.c_str());
    Ort::Session custom(env, model_path.c_str(), op_options);
    std::cout << "custom op: session created in " << seconds_since(t0) << " s\n";
    write_output(custom, input, shape, prefix + ".custom_op.f32");
  } catch (const Ort::Exception& e) {
    std::cerr << "onnxruntime: " << e.what() << "\n";
    return 1;
  } catch (const std::runtime_error& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
