// The C ABI of onnx_l2c.h. Exceptions never cross it.
#include <new>
#include <vector>

#include "model.h"
#include "onnx_l2c.h"
#include "payload.h"
#include "quantize.h"
#include "stream.h"

namespace {

// Runs f, mapping exceptions to L2C_E_* codes and messages.
template <class F>
int guarded(char* err, size_t err_len, F&& f) {
  try {
    f();
    l2c::set_err(err, err_len, "");
    return L2C_OK;
  } catch (const l2c::Error& e) {
    l2c::set_err(err, err_len, e.what());
    return e.code;
  } catch (const std::bad_alloc&) {
    l2c::set_err(err, err_len, "out of memory");
    return L2C_E_MEMORY;
  } catch (const std::length_error&) {
    l2c::set_err(err, err_len, "out of memory (allocation too large)");
    return L2C_E_MEMORY;
  } catch (const std::exception& e) {
    l2c::set_err(err, err_len, std::string("internal error: ") + e.what());
    return L2C_E_CORRUPT;
  } catch (...) {
    l2c::set_err(err, err_len, "internal error");
    return L2C_E_CORRUPT;
  }
}

}  // namespace

struct l2c_model {
  std::unique_ptr<l2c::Model> model;
};

extern "C" {

L2C_API const char* l2c_version(void) { return "1.0.0"; }

L2C_API int l2c_format_version(void) { return l2c::kMaxFormatVersion; }

L2C_API int l2c_payload_info(const uint8_t* payload, size_t payload_size, int32_t* dtype,
                             int32_t* ndim, int64_t* dims, uint64_t* out_bytes, char* err,
                             size_t err_len) {
  return l2c_payload_info_limit(payload, payload_size, 0, dtype, ndim, dims, out_bytes, err, err_len);
}

L2C_API int l2c_payload_info_limit(const uint8_t* payload, size_t payload_size,
                                   uint64_t max_decoded_bytes, int32_t* dtype, int32_t* ndim,
                                   int64_t* dims, uint64_t* out_bytes, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    l2c::Plan plan;
    l2c::parse_payload(payload, payload_size, &plan, max_decoded_bytes);
    if (dtype) *dtype = plan.dtype;
    if (ndim) *ndim = plan.ndim;
    if (dims)
      for (int i = 0; i < plan.ndim; ++i) dims[i] = static_cast<int64_t>(plan.dims[i]);
    if (out_bytes) *out_bytes = plan.out_bytes;
  });
}

L2C_API int l2c_decode(const uint8_t* payload, size_t payload_size, void* out, size_t out_size,
                       char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    l2c::Plan plan;
    l2c::parse_payload(payload, payload_size, &plan, out_size, /*exact_out_bytes=*/true);
    if (!out && out_size) l2c::fail(L2C_E_ARGUMENT, "output buffer is NULL");
    l2c::execute(plan, out);
  });
}

L2C_API int l2c_check_declared(int64_t dtype, const int64_t* dims, int64_t ndim, uint64_t max_decoded_bytes,
                               uint64_t* out_bytes, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    const l2c::Declared d = l2c::check_declared(dtype, dims, ndim, max_decoded_bytes);
    if (out_bytes) *out_bytes = d.out_bytes;
  });
}

L2C_API int l2c_decode_declared(const uint8_t* payload, size_t payload_size, int64_t dtype, const int64_t* dims,
                                int64_t ndim, uint64_t max_decoded_bytes, void* out, size_t out_size, char* err,
                                size_t err_len) {
  return guarded(err, err_len, [&] {
    const l2c::Declared d = l2c::check_declared(dtype, dims, ndim, max_decoded_bytes);
    if (d.out_bytes != out_size)
      l2c::fail(L2C_E_ARGUMENT, "output buffer has " + std::to_string(out_size) + " bytes, the declared tensor needs " +
                                    std::to_string(d.out_bytes));
    if (!out && out_size) l2c::fail(L2C_E_ARGUMENT, "output buffer is NULL");
    l2c::Plan plan;
    l2c::parse_payload(payload, payload_size, &plan, 0, false, &d);
    l2c::execute(plan, out);
  });
}

L2C_API int l2c_encode_stream(const int32_t* indices, uint64_t count, uint32_t alphabet,
                              uint32_t max_scale_bits, uint8_t* out, size_t out_cap,
                              size_t* out_size, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    std::vector<uint8_t> buf;
    l2c::encode_stream(indices, count, alphabet, max_scale_bits, &buf);
    if (out_size) *out_size = buf.size();
    if (buf.size() > out_cap || (!out && !buf.empty()))
      l2c::fail(L2C_E_ARGUMENT, "output buffer too small: " + std::to_string(out_cap) +
                                    " bytes, the stream needs " + std::to_string(buf.size()));
    std::memcpy(out, buf.data(), buf.size());
  });
}

L2C_API int l2c_decode_stream(const uint8_t* data, size_t size, int32_t* indices, uint64_t count,
                              size_t* consumed, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    if (!data && size) l2c::fail(L2C_E_ARGUMENT, "data is NULL");
    l2c::Reader r(data, size);
    l2c::Stream s;
    l2c::parse_stream(r, count, "stream", &s);
    if (s.max_index > static_cast<uint32_t>(INT32_MAX))
      l2c::corrupt("stream: constant index " + std::to_string(s.max_index) + " exceeds int32");
    if (count && !indices) l2c::fail(L2C_E_ARGUMENT, "indices is NULL");
    l2c::decode_stream(s, indices, 0, "stream");
    if (consumed) *consumed = r.pos();
  });
}

L2C_API int l2c_gptq_block(double* w, int64_t groups, int64_t rows, int64_t d, int64_t start, int64_t end,
                           const double* u, const double* step, double theta, double dead_zone, double qmax,
                           const uint8_t* forced_mask, const int32_t* forced_symbols, int32_t* q, double* err,
                           char* err_msg, size_t err_len) {
  return guarded(err_msg, err_len, [&] {
    if (groups < 0 || rows < 0 || d < 0 || start < 0 || start > end || end > d)
      l2c::fail(L2C_E_ARGUMENT, "gptq block: bad sizes (groups " + std::to_string(groups) + ", rows " +
                                    std::to_string(rows) + ", d " + std::to_string(d) + ", columns " +
                                    std::to_string(start) + ".." + std::to_string(end) + ")");
    if (!(qmax >= 0.0 && qmax <= 2147483647.0))
      l2c::fail(L2C_E_ARGUMENT, "gptq block: qmax must be in [0, 2^31 - 1]");
    if (groups == 0 || rows == 0 || start == end) return;
    if (!w || !u || !step || !q || !err || (forced_mask && !forced_symbols))
      l2c::fail(L2C_E_ARGUMENT, "gptq block: a required buffer is NULL");
    l2c::gptq_block({w, groups, rows, d, start, end, u, step, theta, dead_zone, qmax, forced_mask,
                     forced_symbols, q, err});
  });
}

L2C_API int l2c_model_open(const char* model_path, const char* sidecar_path, uint64_t max_decoded_bytes,
                           int num_threads, l2c_model** out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    if (!out) l2c::fail(L2C_E_ARGUMENT, "out is NULL");
    *out = nullptr;
    std::unique_ptr<l2c_model> handle(new l2c_model);
    handle->model.reset(l2c::open_model_files(model_path, sidecar_path, max_decoded_bytes, num_threads));
    *out = handle.release();
  });
}

L2C_API int l2c_model_open_memory(const uint8_t* model, size_t model_size, const uint8_t* sidecar,
                                  size_t sidecar_size, uint64_t max_decoded_bytes, int num_threads,
                                  l2c_model** out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    if (!out) l2c::fail(L2C_E_ARGUMENT, "out is NULL");
    *out = nullptr;
    std::unique_ptr<l2c_model> handle(new l2c_model);
    handle->model.reset(l2c::open_model(model, model_size, sidecar, sidecar_size, max_decoded_bytes, num_threads));
    *out = handle.release();
  });
}

L2C_API const uint8_t* l2c_model_graph(const l2c_model* model, size_t* size) {
  if (!model) {
    if (size) *size = 0;
    return nullptr;
  }
  if (size) *size = model->model->plain.size();
  return model->model->plain.data();
}

L2C_API size_t l2c_model_tensor_count(const l2c_model* model) { return model ? model->model->tensors.size() : 0; }

L2C_API int l2c_model_tensor(const l2c_model* model, size_t index, const char** name, int32_t* dtype,
                             int32_t* ndim, const int64_t** dims, void** data, uint64_t* nbytes) {
  if (!model || index >= model->model->tensors.size()) return L2C_E_ARGUMENT;
  const l2c::Tensor& t = model->model->tensors[index];
  if (name) *name = t.name.c_str();
  if (dtype) *dtype = t.declared.dtype;
  if (ndim) *ndim = t.declared.ndim;
  if (dims) *dims = t.dims;
  if (data) *data = t.data.get();
  if (nbytes) *nbytes = t.declared.out_bytes;
  return L2C_OK;
}

L2C_API void l2c_model_close(l2c_model* model) { delete model; }

}  // extern "C"
