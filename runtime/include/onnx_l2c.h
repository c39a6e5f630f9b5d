/* onnx_l2c native runtime: C ABI.
 *
 * One shared library holds the payload decoder (docs/FORMAT.md), the stream
 * encoder used by the Python converter, and the onnxruntime custom op
 * ai.onnx_l2c::Decode (RegisterCustomOps). Python reaches it through ctypes;
 * other languages call the same functions.
 *
 * All functions are thread-safe and never read outside the given buffers.
 * Functions returning int return 0 on success and a nonzero L2C_E* code on
 * failure, with a NUL-terminated message written to err (truncated to
 * err_len bytes; err may be NULL when err_len is 0).
 */
#ifndef ONNX_L2C_H
#define ONNX_L2C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define L2C_API __declspec(dllexport)
#else
#define L2C_API __attribute__((visibility("default")))
#endif

enum {
  L2C_OK = 0,
  L2C_E_CORRUPT = 1,   /* malformed, truncated or CRC mismatch */
  L2C_E_VERSION = 2,   /* bad magic or unsupported version / stage kind */
  L2C_E_ARGUMENT = 3,  /* caller error: output buffer size, bad parameters */
  L2C_E_MEMORY = 4,    /* allocation failed */
  L2C_E_LIMIT = 5      /* the declared decoded size exceeds the caller's budget */
};

#define L2C_MAX_DIMS 8

/* Library version string, e.g. "1.0.0". */
L2C_API const char* l2c_version(void);

/* Highest payload format version this library decodes (5). */
L2C_API int l2c_format_version(void);

/* Parse and validate a payload header (magic, version, CRC, dims, numel).
 * dims must have room for L2C_MAX_DIMS entries. *out_bytes receives the
 * size of the decoded tensor in bytes (numel * element size; for the packed
 * 4-bit and 2-bit dtypes, ceil(numel * bits / 8), packed as ONNX and
 * onnxruntime store them: the first element in the low bits of a byte). */
L2C_API int l2c_payload_info(const uint8_t* payload, size_t payload_size,
                             int32_t* dtype, int32_t* ndim, int64_t* dims,
                             uint64_t* out_bytes, char* err, size_t err_len);

/* l2c_payload_info, refusing (L2C_E_LIMIT) a payload whose decoded tensor
 * would exceed max_decoded_bytes (0: no limit). Call it before allocating
 * the output: a payload of a few bytes may declare terabytes. */
L2C_API int l2c_payload_info_limit(const uint8_t* payload, size_t payload_size,
                                   uint64_t max_decoded_bytes, int32_t* dtype,
                                   int32_t* ndim, int64_t* dims, uint64_t* out_bytes,
                                   char* err, size_t err_len);

/* Decode a whole payload into out (exactly out_size bytes, which must equal
 * the size l2c_payload_info reports). */
L2C_API int l2c_decode(const uint8_t* payload, size_t payload_size,
                       void* out, size_t out_size, char* err, size_t err_len);

/* The one check of what a graph declares for a decoded tensor (a Decode
 * node's dtype and shape attributes), shared by every load path: an ONNX
 * dtype the format holds (docs/FORMAT.md: the float types, and from format
 * version 5 the integer, bool, double, float8, and packed int4/uint4/float4/
 * int2/uint2 types); 0..8 dims, each
 * >= 0, at most 2^40 elements (L2C_E_CORRUPT otherwise); at most max_decoded_bytes bytes (0: no limit; L2C_E_LIMIT).
 * *out_bytes receives the declared tensor's size. */
L2C_API int l2c_check_declared(int64_t dtype, const int64_t* dims, int64_t ndim,
                               uint64_t max_decoded_bytes, uint64_t* out_bytes,
                               char* err, size_t err_len);

/* Decode a payload into the tensor a graph declares: l2c_check_declared,
 * then the payload must hold exactly that dtype and shape (L2C_E_CORRUPT,
 * checked right after its header, before its stages are parsed); out must
 * have exactly the declared size. What the custom op runs for each node. */
L2C_API int l2c_decode_declared(const uint8_t* payload, size_t payload_size,
                                int64_t dtype, const int64_t* dims, int64_t ndim,
                                uint64_t max_decoded_bytes, void* out, size_t out_size,
                                char* err, size_t err_len);

/* Encode `count` indices in [0, alphabet) as one Stream (FORMAT.md).
 * The encoder picks the mode (constant / stored / rANS) and scale_bits that
 * give the fewest bytes; lanes is 8 for rANS.
 * max_scale_bits caps scale_bits (1..16; 0 = default 16).
 * Writes at most out_cap bytes; *out_size receives the stream's size.
 * If out_cap is too small, returns L2C_E_ARGUMENT and *out_size receives the
 * needed size (call again with a bigger buffer). */
L2C_API int l2c_encode_stream(const int32_t* indices, uint64_t count,
                              uint32_t alphabet, uint32_t max_scale_bits,
                              uint8_t* out, size_t out_cap, size_t* out_size,
                              char* err, size_t err_len);

/* Decode one Stream (for tests and tools). *consumed receives the number of
 * bytes the stream occupies. indices must have room for `count` entries,
 * where count must equal the stream's count. */
L2C_API int l2c_decode_stream(const uint8_t* data, size_t size,
                              int32_t* indices, uint64_t count,
                              size_t* consumed, char* err, size_t err_len);

/* Output-aware rounding (GPTQ) within one block of columns, for the Python
 * planner (passes/gptq.py): w is (groups, rows, d) float64 in C order, its
 * columns already in the quantization order, updated in place; u is
 * (groups, d, d), the upper Cholesky factor of the inverse Hessian in that
 * order (nonzero diagonal); step is (groups, rows), each > 0. Columns
 * [start, end) are quantized one at a time, q = sign(w)·min(round(|w|/step),
 * qmax), 0 within 0.5 + dead_zone steps, or the forced symbol where
 * forced_mask (may be NULL, with forced_symbols) is nonzero; each column's
 * error (w − (q − sign(q)·theta)·step) / u[i][i] goes to err (groups, rows,
 * end − start) and is subtracted from the block's later columns along u's
 * row i. The caller updates the columns after `end`. */
L2C_API int l2c_gptq_block(double* w, int64_t groups, int64_t rows, int64_t d,
                           int64_t start, int64_t end, const double* u,
                           const double* step, double theta, double dead_zone,
                           double qmax, const uint8_t* forced_mask,
                           const int32_t* forced_symbols, int32_t* q,
                           double* err, char* err_msg, size_t err_len);

/* ---- A whole model at the original's speed, from any onnxruntime binding ----
 *
 * A compressed model's sidecar ends with an index (docs/FORMAT.md, "Sidecar
 * index", written since onnx_l2c 0.2): l2c_model_open rebuilds from it the plain
 * graph (the model with each Decode node gone and its weight an initializer
 * stored as external data at the virtual location "onnx_l2c.virtual") and
 * decodes every weight, in parallel, without parsing protobuf. Give the
 * tensors to onnxruntime with AddExternalInitializers and create the session
 * from the graph's bytes: onnxruntime sees the original model (prepacking,
 * layout transforms and constant folding apply), and runs at its speed.
 *
 *   l2c_model* m; char err[512];
 *   if (l2c_model_open("small.onnx", NULL, 0, 0, &m, err, sizeof err)) { ...err... }
 *   for (size_t i = 0; i < l2c_model_tensor_count(m); ++i) {
 *     l2c_model_tensor(m, i, &name, &dtype, &ndim, &dims, &data, &nbytes);
 *     ... CreateTensorWithDataAsOrtValue(info, data, nbytes, dims, ndim, dtype, &value) ...
 *   }
 *   ... AddExternalInitializers(options, names, values, n);
 *   ... CreateSessionFromArray(env, l2c_model_graph(m, &size), size, options, &session);
 *   l2c_model_close(m);   // onnxruntime copied the tensors while it created the session
 *
 * The tensors' memory belongs to the model. AddExternalInitializers copies
 * the data into the session (onnxruntime's documentation; tests pin it), so
 * the model may be closed once the session exists. Not AddInitializer: that
 * one does not replace an external-data initializer, and onnxruntime then
 * looks for the virtual file. dtype is ONNX's TensorProto data type, which
 * onnxruntime's ONNXTensorElementDataType numbers the same way for every
 * dtype the writer stores. */
typedef struct l2c_model l2c_model;

/* Open model_path (the compressed .onnx) and its sidecar (sidecar_path, or
 * NULL for model_path + ".l2c"), validate the index against the model file's
 * size and CRC (an edited .onnx is refused: L2C_E_CORRUPT), rebuild the plain
 * graph and decode every tensor on num_threads threads (0: one per core).
 * max_decoded_bytes: 0 = the default budget, max(256 MiB, 1024 x the
 * payloads' bytes); UINT64_MAX = no limit (L2C_E_LIMIT above it). A sidecar
 * without an index (written before onnx_l2c 0.2, or for a model with a weight
 * no node reads or a subgraph output) is L2C_E_VERSION: load that model with
 * the custom op. On success *model receives the handle (else NULL). The
 * files are memory-mapped while the call runs (POSIX; read elsewhere): they
 * must not be truncated or rewritten meanwhile, as for onnxruntime's own
 * external data (onnx_l2c's writer replaces files, never rewrites them). */
L2C_API int l2c_model_open(const char* model_path, const char* sidecar_path, uint64_t max_decoded_bytes,
                           int num_threads, l2c_model** model, char* err, size_t err_len);

/* l2c_model_open on the two files' bytes (not kept after the call). */
L2C_API int l2c_model_open_memory(const uint8_t* model_bytes, size_t model_size, const uint8_t* sidecar,
                                  size_t sidecar_size, uint64_t max_decoded_bytes, int num_threads,
                                  l2c_model** model, char* err, size_t err_len);

/* The plain graph's bytes (a serialized ONNX ModelProto); *size receives its size. */
L2C_API const uint8_t* l2c_model_graph(const l2c_model* model, size_t* size);

/* How many decoded tensors the model holds. */
L2C_API size_t l2c_model_tensor_count(const l2c_model* model);

/* Tensor `index`: its initializer name, dtype, ndim, dims (ndim entries),
 * decoded data (64-byte aligned, nbytes bytes: packed 4-bit types two to a
 * byte, as onnxruntime stores them). Any out-pointer may be NULL. Pointers
 * stay valid until l2c_model_close. L2C_E_ARGUMENT for a bad index. */
L2C_API int l2c_model_tensor(const l2c_model* model, size_t index, const char** name, int32_t* dtype,
                             int32_t* ndim, const int64_t** dims, void** data, uint64_t* nbytes);

/* Release the model and its tensors (NULL is allowed). */
L2C_API void l2c_model_close(l2c_model* model);

#ifdef __cplusplus
}
#endif
#endif /* ONNX_L2C_H */
