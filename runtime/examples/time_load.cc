// Time, from C++, what a compressed model costs against its original:
// session creation (the original from its file; the compressed one through
// open_compressed, l2c_session.h) and the latency of one run, both interleaved
// and reported as medians. `onnx-l2c bench runtime --cpp-timer` runs it.
//
// Usage: time_load ORIGINAL.onnx COMPRESSED.onnx RUNS INPUT...
// where INPUT is FILE:D0xD1x... for each of the model's inputs, in order: the
// input's raw little-endian bytes (its element type is the model's) and its
// shape. Prints one JSON object: create_plain_s, create_fast_s,
// latency_plain_s, latency_fast_s.
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "l2c_session.h"

namespace {

struct Input {
  std::vector<char> bytes;
  std::vector<int64_t> shape;
};

Input read_input(const std::string& spec) {
  const size_t colon = spec.rfind(':');
  if (colon == std::string::npos) throw std::runtime_error("input " + spec + ": expected FILE:D0xD1x...");
  Input in;
  std::ifstream f(spec.substr(0, colon), std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + spec.substr(0, colon));
  in.bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  const std::string dims = spec.substr(colon + 1);
  for (size_t start = 0; !dims.empty() && start <= dims.size();) {  // "FILE:" is a scalar
    const size_t x = std::min(dims.find('x', start), dims.size());
    in.shape.push_back(std::stoll(dims.substr(start, x - start)));
    start = x + 1;
  }
  return in;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

template <class F>
double seconds(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Runner {
  std::vector<std::string> in_names, out_names;
  std::vector<Ort::Value> values;

  Runner(Ort::Session& session, std::vector<Input>& inputs) {
    Ort::AllocatorWithDefaultOptions allocator;
    if (inputs.size() != session.GetInputCount())
      throw std::runtime_error("the model has " + std::to_string(session.GetInputCount()) + " inputs, " +
                               std::to_string(inputs.size()) + " given");
    const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    for (size_t i = 0; i < inputs.size(); ++i) {
      in_names.push_back(session.GetInputNameAllocated(i, allocator).get());
      const auto type = session.GetInputTypeInfo(i).GetTensorTypeAndShapeInfo().GetElementType();
      values.push_back(Ort::Value::CreateTensor(cpu, inputs[i].bytes.data(), inputs[i].bytes.size(),
                                                inputs[i].shape.data(), inputs[i].shape.size(), type));
    }
    for (size_t i = 0; i < session.GetOutputCount(); ++i)
      out_names.push_back(session.GetOutputNameAllocated(i, allocator).get());
  }

  void run(Ort::Session& session) {
    std::vector<const char*> in, out;
    for (const auto& n : in_names) in.push_back(n.c_str());
    for (const auto& n : out_names) out.push_back(n.c_str());
    session.Run(Ort::RunOptions{nullptr}, in.data(), values.data(), values.size(), out.data(), out.size());
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::cerr << "usage: time_load ORIGINAL.onnx COMPRESSED.onnx RUNS FILE:D0xD1x... [...]\n";
    return 2;
  }
  try {
    const std::string original = argv[1], compressed = argv[2];
    const int runs = std::max(1, std::stoi(argv[3]));
    std::vector<Input> inputs;
    for (int i = 4; i < argc; ++i) inputs.push_back(read_input(argv[i]));
    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "onnx_l2c time_load");
    // No idle spinning, in both: the runs alternate between two sessions, and
    // the threads of the one that just ran would spin on the cores the other
    // needs (on 2 cores, ratios of 0.9-1.4x between identical sessions).
    auto options = [] {
      Ort::SessionOptions o;
      o.AddConfigEntry("session.intra_op.allow_spinning", "0");
      return o;
    };
    auto open_plain = [&] {
      Ort::SessionOptions o = options();
      return Ort::Session(env, original.c_str(), o);
    };
    auto open_fast = [&] {
      Ort::SessionOptions o = options();
      return open_compressed(env, compressed, o);
    };
    std::vector<double> create_plain, create_fast;
    for (int k = 0; k < std::max(5, runs / 4); ++k) {
      Ort::Session a{nullptr}, b{nullptr};  // released after the timings
      create_plain.push_back(seconds([&] { a = open_plain(); }));
      create_fast.push_back(seconds([&] { b = open_fast(); }));
    }
    Ort::Session plain = open_plain(), fast = open_fast();
    Runner plain_runner(plain, inputs), fast_runner(fast, inputs);
    plain_runner.run(plain);  // warm-up
    fast_runner.run(fast);
    std::vector<double> latency_plain, latency_fast;
    for (int k = 0; k < runs; ++k) {
      latency_plain.push_back(seconds([&] { plain_runner.run(plain); }));
      latency_fast.push_back(seconds([&] { fast_runner.run(fast); }));
    }
    std::cout << "{\"create_plain_s\": " << median(create_plain) << ", \"create_fast_s\": " << median(create_fast)
              << ", \"latency_plain_s\": " << median(latency_plain)
              << ", \"latency_fast_s\": " << median(latency_fast) << "}\n";
  } catch (const std::exception& e) {
    std::cerr << "time_load: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
