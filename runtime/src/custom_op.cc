// onnxruntime custom op ai.onnx_l2c::Decode (opset 1), plain C API.
//
// The library does not link onnxruntime: RegisterCustomOps receives the
// OrtApiBase and asks it for the OrtApi of the headers' ORT_API_VERSION.
//
// Input 0: a uint8 1-D constant initializer, the payload (or what
// onnxruntime folds into one: a Constant node, an Identity chain). Output 0: the
// decoded tensor, declared by the required node attributes `dtype` (int: an
// ONNX data type the format holds) and `shape` (ints), which the shape-inference function below
// turns into the output type and shape; the converter writes both. Optional
// string attributes `tensor` and `sidecar` name the weight in error
// messages. The payload is decoded once, when the kernel is created, by
// l2c::check_declared and parse_payload against the declaration: the same
// checks the fast loader and decompress run through the C API
// (l2c_decode_declared), so the three load paths accept the same files.
// Session creation fails with a status naming the tensor when the payload is
// corrupt, disagrees with the declaration or exceeds the decode budget.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "onnxruntime_c_api.h"
#include "payload.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#if !defined(MADV_PAGEOUT)
#define MADV_PAGEOUT 21  // Linux 5.4; older glibc headers lack the name
#endif
#endif

namespace {

const OrtApi* g_api = nullptr;  // set once by RegisterCustomOps

const char* kDomain = "ai.onnx_l2c";

std::string take_message(OrtStatus* st) {
  std::string m = g_api->GetErrorMessage(st);
  g_api->ReleaseStatus(st);
  return m;
}

// Optional string attribute; "" when absent.
std::string string_attr(const OrtKernelInfo* info, const char* name) {
  size_t size = 0;
  OrtStatus* st = g_api->KernelInfoGetAttribute_string(info, name, nullptr, &size);
  if (st) {
    g_api->ReleaseStatus(st);
    return "";
  }
  std::string v(size, '\0');
  st = g_api->KernelInfoGetAttribute_string(info, name, &v[0], &size);
  if (st) {
    g_api->ReleaseStatus(st);
    return "";
  }
  v.resize(std::strlen(v.c_str()));
  return v;
}

// The required declaration: int attribute `dtype` and ints attribute
// `shape` (false when either is missing or of another attribute type).
bool declaration(const OrtKernelInfo* info, int64_t* dtype, std::vector<int64_t>* shape) {
  OrtStatus* st = g_api->KernelInfoGetAttribute_int64(info, "dtype", dtype);
  size_t size = 0;
  if (!st) st = g_api->KernelInfoGetAttributeArray_int64(info, "shape", nullptr, &size);
  if (!st && size) {
    shape->resize(size);
    st = g_api->KernelInfoGetAttributeArray_int64(info, "shape", shape->data(), &size);
    shape->resize(size);
  }
  if (st) g_api->ReleaseStatus(st);
  return st == nullptr;
}

std::string node_name(const OrtKernelInfo* info) {
  size_t size = 0;
  OrtStatus* st = g_api->KernelInfo_GetNodeName(info, nullptr, &size);
  if (st) {
    g_api->ReleaseStatus(st);
    return "";
  }
  std::string v(size, '\0');
  st = g_api->KernelInfo_GetNodeName(info, &v[0], &size);
  if (st) {
    g_api->ReleaseStatus(st);
    return "";
  }
  v.resize(std::strlen(v.c_str()));
  return v;
}

ONNXTensorElementDataType ort_type(int dtype) {
  // onnxruntime numbers its element types as ONNX's TensorProto does, up to INT4
  switch (dtype) {
    case l2c::kFloat32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case l2c::kFloat16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case l2c::kBFloat16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
    case l2c::kUint8: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    case l2c::kInt8: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
    case l2c::kUint16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16;
    case l2c::kInt16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16;
    case l2c::kInt32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case l2c::kInt64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    case l2c::kBool: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
    case l2c::kDouble: return ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
    case l2c::kUint32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32;
    case l2c::kUint64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64;
    case l2c::kFloat8E4M3FN: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT8E4M3FN;
    case l2c::kFloat8E4M3FNUZ: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT8E4M3FNUZ;
    case l2c::kFloat8E5M2: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT8E5M2;
    case l2c::kFloat8E5M2FNUZ: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT8E5M2FNUZ;
    case l2c::kUint4: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT4;
    case l2c::kInt4: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT4;
    // Newer than the headers this builds against (onnxruntime API 21), and
    // numbered in the order onnxruntime added them, not as ONNX does:
    // FLOAT4E2M1 23, UINT2 24, INT2 25. (float8e8m0, ONNX's 24, is not
    // decoded: onnxruntime 1.32 has no custom-op output of that type.)
    case l2c::kFloat4E2M1: return static_cast<ONNXTensorElementDataType>(23);
    case l2c::kUint2: return static_cast<ONNXTensorElementDataType>(24);
    case l2c::kInt2: return static_cast<ONNXTensorElementDataType>(25);
    default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
}

// What every live Decode kernel of the process holds: decoded bytes and the
// stored bytes they came from. The decode budget is checked against these
// totals, not each payload alone: a model of many tiny payloads, each within
// the rule, would otherwise add up to any size. (The op cannot see which
// session a kernel belongs to; every model loaded at once shares the budget,
// which scales with their stored bytes.)
std::mutex g_held_mutex;
uint64_t g_held_decoded = 0;
uint64_t g_held_stored = 0;

uint64_t saturating_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

struct Kernel {
  std::string context;  // "onnx_l2c Decode: tensor 'x' (sidecar 'y')" for messages
  int dtype = 0;
  std::vector<int64_t> dims;
  std::unique_ptr<uint8_t[]> data;  // not zero-filled: execute() writes every byte
  size_t size = 0;
  uint64_t held_decoded = 0;  // this kernel's share of g_held_*, given back when it is destroyed
  uint64_t held_stored = 0;

  ~Kernel() {
    std::lock_guard<std::mutex> lock(g_held_mutex);
    g_held_decoded -= held_decoded;
    g_held_stored -= held_stored;
  }

  OrtStatus* error(OrtErrorCode code, const std::string& msg) const {
    return g_api->CreateStatus(code, (context + ": " + msg).c_str());
  }
  OrtStatus* error(const l2c::Error& e) const {
    if (e.code == L2C_E_LIMIT)
      return error(ORT_FAIL, std::string(e.what()) +
                                 "; set ONNX_L2C_MAX_DECODED_BYTES (bytes, 0 = no limit) to raise it");
    return error(e.code == L2C_E_MEMORY ? ORT_FAIL : ORT_INVALID_GRAPH, e.what());
  }
};

// Reads the payload (a uint8 1-D tensor value): pointer and byte count.
OrtStatus* payload_view(const Kernel& k, const OrtValue* v, const uint8_t** data, size_t* size) {
  OrtTensorTypeAndShapeInfo* ti = nullptr;
  if (OrtStatus* st = g_api->GetTensorTypeAndShape(v, &ti)) return st;
  ONNXTensorElementDataType t = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  size_t n = 0, rank = 0;
  OrtStatus* st = g_api->GetTensorElementType(ti, &t);
  if (!st) st = g_api->GetTensorShapeElementCount(ti, &n);
  if (!st) st = g_api->GetDimensionsCount(ti, &rank);
  g_api->ReleaseTensorTypeAndShapeInfo(ti);
  if (st) return st;
  if (t != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 || rank != 1)
    return k.error(ORT_INVALID_GRAPH, "the payload must be a 1-D uint8 tensor, not a " + std::to_string(rank) +
                                          "-D tensor of element type " + std::to_string(t));
  void* p = nullptr;
  if (n) {
    if ((st = g_api->GetTensorMutableData(const_cast<OrtValue*>(v), &p))) return st;
  }
  *data = static_cast<const uint8_t*>(p);
  *size = n;
  return nullptr;
}

// Hands the pages of a decoded payload back to the system. onnxruntime
// memory-maps external data and keeps every payload initializer for the
// session's life, so without this the mapped pages of all payloads stay
// resident after their one read here (0.8x the weights' size for lossless
// payloads). MADV_PAGEOUT only reclaims: clean file pages are dropped and
// read again if touched; anonymous memory (a payload onnxruntime copied)
// keeps its contents, since nothing is written or discarded. Elsewhere, or
// on kernels before 5.4 (EINVAL), it does nothing.
void release_pages(const uint8_t* data, size_t size) {
#if defined(__linux__)
  const long page = sysconf(_SC_PAGESIZE);
  if (page <= 0 || size == 0) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(data);
  const uintptr_t mask = static_cast<uintptr_t>(page) - 1;
  const uintptr_t begin = (p + mask) & ~mask;  // whole pages inside the payload only
  const uintptr_t end = (p + size) & ~mask;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_PAGEOUT);
#else
  (void)data;
  (void)size;
#endif
}

// Allocates output 0 with `dims`, checks that the graph gave it the element
// type of `dtype`, and returns its data pointer (null for empty tensors).
OrtStatus* typed_output(const Kernel& k, OrtKernelContext* ctx, int dtype, const int64_t* dims,
                        size_t ndim, size_t bytes, void** data) {
  OrtValue* out = nullptr;
  if (OrtStatus* st = g_api->KernelContext_GetOutput(ctx, 0, dims, ndim, &out)) return st;
  OrtTensorTypeAndShapeInfo* ti = nullptr;
  if (OrtStatus* st = g_api->GetTensorTypeAndShape(out, &ti)) return st;
  ONNXTensorElementDataType t = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  OrtStatus* st = g_api->GetTensorElementType(ti, &t);
  g_api->ReleaseTensorTypeAndShapeInfo(ti);
  if (st) return st;
  if (t != ort_type(dtype))
    return k.error(ORT_INVALID_GRAPH,
                   std::string("the graph declares output element type ") + std::to_string(t) +
                       " but the payload decodes to " + l2c::dtype_name(dtype) + " (" +
                       std::to_string(ort_type(dtype)) + ")");
  *data = nullptr;
  if (bytes) return g_api->GetTensorMutableData(out, data);
  return nullptr;
}

// The decode budget for `stored` payload bytes (one payload, or all that the
// process's kernels hold): ONNX_L2C_MAX_DECODED_BYTES (decimal bytes; 0 = no
// limit) when set, else l2c::default_decode_limit.
uint64_t decode_limit(uint64_t stored) {
  const char* env = std::getenv("ONNX_L2C_MAX_DECODED_BYTES");
  if (env && *env) {
    char* end = nullptr;
    const unsigned long long v = std::strtoull(env, &end, 10);
    if (end && *end == '\0') return v;
  }
  return l2c::default_decode_limit(stored);
}

// Counts `decoded` bytes from `stored` payload bytes against the process's
// budget (decode_limit of all live kernels' stored bytes), or refuses them.
OrtStatus* reserve(Kernel& k, uint64_t decoded, uint64_t stored) {
  std::lock_guard<std::mutex> lock(g_held_mutex);
  const uint64_t total = saturating_add(g_held_decoded, decoded);
  const uint64_t total_stored = saturating_add(g_held_stored, stored);
  const uint64_t limit = decode_limit(total_stored);
  if (limit != 0 && total > limit)
    return k.error(ORT_FAIL, "the Decode nodes of this process would hold " + std::to_string(total) +
                                 " decoded bytes (this one " + std::to_string(decoded) + ") from " +
                                 std::to_string(total_stored) + " stored bytes, above the limit of " +
                                 std::to_string(limit) +
                                 "; set ONNX_L2C_MAX_DECODED_BYTES (bytes, 0 = no limit) to raise it");
  g_held_decoded = total;
  g_held_stored = total_stored;
  k.held_decoded = decoded;
  k.held_stored = stored;
  return nullptr;
}

// Checks the output type (and static shape, when known) that onnxruntime
// resolved for the node against its declaration, so that a value_info
// entry of another type fails at session creation.
OrtStatus* check_output_type(const Kernel& k, const OrtKernelInfo* info) {
  OrtTypeInfo* type_info = nullptr;
  if (OrtStatus* st = g_api->KernelInfo_GetOutputTypeInfo(info, 0, &type_info)) {
    g_api->ReleaseStatus(st);  // no declared type to compare with
    return nullptr;
  }
  const OrtTensorTypeAndShapeInfo* ti = nullptr;
  ONNXTensorElementDataType t = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  size_t rank = 0;
  std::vector<int64_t> dims;
  OrtStatus* st = g_api->CastTypeInfoToTensorInfo(type_info, &ti);
  if (!st && ti) st = g_api->GetTensorElementType(ti, &t);
  if (!st && ti) st = g_api->GetDimensionsCount(ti, &rank);
  if (!st && ti) {
    dims.resize(rank);
    st = g_api->GetDimensions(ti, dims.data(), rank);
  }
  g_api->ReleaseTypeInfo(type_info);
  if (st) {
    g_api->ReleaseStatus(st);
    return nullptr;
  }
  if (t != ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED && t != ort_type(k.dtype))
    return k.error(ORT_INVALID_GRAPH,
                   std::string("the graph declares output element type ") + std::to_string(t) +
                       " but its attribute dtype is " + l2c::dtype_name(k.dtype) + " (" +
                       std::to_string(ort_type(k.dtype)) + ")");
  bool static_shape = rank == k.dims.size();
  for (size_t i = 0; static_shape && i < rank; ++i) static_shape = dims[i] >= 0;
  if (static_shape && dims != k.dims) {
    auto str = [](const std::vector<int64_t>& d) {
      std::string s = "[";
      for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
      return s + "]";
    };
    return k.error(ORT_INVALID_GRAPH, "the graph declares output shape " + str(dims) +
                                          " but its attribute shape is " + str(k.dims));
  }
  return nullptr;
}

// ------------------------------------------------------------ OrtCustomOp

OrtStatusPtr ORT_API_CALL create_kernel(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info,
                                        void** out) {
  *out = nullptr;
  std::unique_ptr<Kernel> k;
  try {
    k.reset(new Kernel);
    const std::string tensor = string_attr(info, "tensor");
    const std::string sidecar = string_attr(info, "sidecar");
    const std::string node = node_name(info);
    k->context = "onnx_l2c Decode";
    if (!tensor.empty()) k->context += ": tensor '" + tensor + "'";
    else if (!node.empty()) k->context += ": node '" + node + "'";
    if (!sidecar.empty()) k->context += " (sidecar '" + sidecar + "')";
  } catch (const std::bad_alloc&) {
    return g_api->CreateStatus(ORT_FAIL, "onnx_l2c Decode: out of memory");
  }
  int64_t dtype = 0;
  std::vector<int64_t> shape;
  try {
    if (!declaration(info, &dtype, &shape))
      return k->error(ORT_INVALID_GRAPH, "the node needs the attributes dtype (int: an ONNX data type) and shape (ints)");
  } catch (const std::bad_alloc&) {
    return k->error(ORT_FAIL, "out of memory");
  }
  int is_const = 0;
  const OrtValue* value = nullptr;
  if (OrtStatus* st = g_api->KernelInfoGetConstantInput_tensor(info, 0, &is_const, &value))
    return k->error(ORT_FAIL, take_message(st));
  if (!is_const || !value)
    return k->error(ORT_INVALID_GRAPH, "the payload must be a constant initializer (not a graph input or "
                                       "another node's output; onnxruntime folds an Identity chain to an "
                                       "initializer only when graph optimizations are enabled)");
  const uint8_t* data = nullptr;
  size_t size = 0;
  if (OrtStatus* st = payload_view(*k, value, &data, &size)) return st;
  try {
    // The declaration and the decode budget are checked before the payload,
    // the payload's header against the declaration before its stages.
    const l2c::Declared declared =
        l2c::check_declared(dtype, shape.data(), static_cast<int64_t>(shape.size()), decode_limit(size));
    k->dtype = declared.dtype;
    k->dims = shape;
    if (OrtStatus* st = check_output_type(*k, info)) return st;
    if (OrtStatus* st = reserve(*k, declared.out_bytes, size)) return st;
    l2c::Plan plan;
    l2c::parse_payload(data, size, &plan, 0, false, &declared);
    if (plan.out_bytes > SIZE_MAX) throw std::bad_alloc();
    k->size = static_cast<size_t>(plan.out_bytes);
    k->data.reset(new uint8_t[k->size ? k->size : 1]);
    l2c::execute(plan, k->data.get());
    release_pages(data, size);
  } catch (const l2c::Error& e) {
    return k->error(e);
  } catch (const std::bad_alloc&) {
    return k->error(ORT_FAIL, "out of memory");
  } catch (const std::exception& e) {
    return k->error(ORT_FAIL, e.what());
  }
  *out = k.release();
  return nullptr;
}

OrtStatusPtr ORT_API_CALL compute(void* kernel, OrtKernelContext* ctx) {
  const Kernel& k = *static_cast<const Kernel*>(kernel);
  void* p = nullptr;
  if (OrtStatus* st = typed_output(k, ctx, k.dtype, k.dims.data(), k.dims.size(), k.size, &p)) return st;
  if (k.size) std::memcpy(p, k.data.get(), k.size);
  return nullptr;
}

void ORT_API_CALL destroy_kernel(void* kernel) { delete static_cast<Kernel*>(kernel); }

// Shape inference from the node attributes `dtype` (int: an ONNX data type) and
// `shape` (ints). Without both nothing is inferred, and onnxruntime refuses
// the graph (the output type is undefined); create_kernel would too.
OrtStatusPtr ORT_API_CALL infer_output(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  const OrtOpAttr* dattr = nullptr;
  const OrtOpAttr* sattr = nullptr;
  OrtStatus* st = g_api->ShapeInferContext_GetAttribute(ctx, "dtype", &dattr);
  if (st) g_api->ReleaseStatus(st);
  if (st || !dattr) return nullptr;
  st = g_api->ShapeInferContext_GetAttribute(ctx, "shape", &sattr);
  if (st) g_api->ReleaseStatus(st);
  if (st || !sattr) return nullptr;
  int64_t dtype = 0;
  size_t len = 0;
  if ((st = g_api->ReadOpAttr(dattr, ORT_OP_ATTR_INT, &dtype, sizeof dtype, &len))) return st;
  const ONNXTensorElementDataType t = ort_type(static_cast<int>(dtype));
  if (t == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED)
    return g_api->CreateStatus(ORT_INVALID_GRAPH,
                               ("onnx_l2c Decode: attribute dtype=" + std::to_string(dtype) +
                                " is not a data type the format holds (docs/FORMAT.md)").c_str());
  int64_t dims[L2C_MAX_DIMS];
  len = 0;
  st = g_api->ReadOpAttr(sattr, ORT_OP_ATTR_INTS, dims, sizeof dims, &len);
  if (st || len % sizeof(int64_t) != 0) {
    if (st) g_api->ReleaseStatus(st);
    return g_api->CreateStatus(ORT_INVALID_GRAPH,
                               "onnx_l2c Decode: attribute shape must be at most 8 ints");
  }
  OrtTensorTypeAndShapeInfo* info = nullptr;
  if ((st = g_api->CreateTensorTypeAndShapeInfo(&info))) return st;
  st = g_api->SetTensorElementType(info, t);
  if (!st) st = g_api->SetDimensions(info, dims, len / sizeof(int64_t));
  if (!st) st = g_api->ShapeInferContext_SetOutputTypeShape(ctx, 0, info);
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  return st;
}

const char* ORT_API_CALL get_name(const OrtCustomOp*) { return "Decode"; }
const char* ORT_API_CALL get_ep(const OrtCustomOp*) { return "CPUExecutionProvider"; }
size_t ORT_API_CALL one(const OrtCustomOp*) { return 1; }
ONNXTensorElementDataType ORT_API_CALL input_type(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
}
ONNXTensorElementDataType ORT_API_CALL output_type(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}
OrtCustomOpInputOutputCharacteristic ORT_API_CALL required(const OrtCustomOp*, size_t) {
  return INPUT_OUTPUT_REQUIRED;
}
OrtMemType ORT_API_CALL mem_default(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int ORT_API_CALL int_one(const OrtCustomOp*) { return 1; }
int ORT_API_CALL int_zero(const OrtCustomOp*) { return 0; }

OrtCustomOp make_op() {
  OrtCustomOp op;
  std::memset(&op, 0, sizeof op);
  op.version = ORT_API_VERSION;
  op.CreateKernel = nullptr;
  op.GetName = get_name;
  op.GetExecutionProviderType = get_ep;
  op.GetInputType = input_type;
  op.GetInputTypeCount = one;
  op.GetOutputType = output_type;
  op.GetOutputTypeCount = one;
  op.KernelCompute = nullptr;
  op.KernelDestroy = destroy_kernel;
  op.GetInputCharacteristic = required;
  op.GetOutputCharacteristic = required;
  op.GetInputMemoryType = mem_default;
  op.GetVariadicInputMinArity = int_one;
  op.GetVariadicInputHomogeneity = int_zero;
  op.GetVariadicOutputMinArity = int_one;
  op.GetVariadicOutputHomogeneity = int_zero;
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute;
  op.InferOutputShapeFn = infer_output;
  op.GetStartVersion = int_one;
  op.GetEndVersion = int_one;
  return op;
}

const OrtCustomOp g_op = make_op();

}  // namespace

extern "C" L2C_API OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  if (!api_base) return nullptr;  // cannot even report an error
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (!api) {
    // Older onnxruntime: report through its version-1 API, which every
    // release provides.
    const OrtApi* v1 = api_base->GetApi(1);
    if (!v1) return nullptr;
    const std::string msg = std::string("onnx_l2c needs onnxruntime >= 1.21 (C API version ") +
                            std::to_string(ORT_API_VERSION) + "), this is onnxruntime " +
                            api_base->GetVersionString();
    return v1->CreateStatus(ORT_NOT_IMPLEMENTED, msg.c_str());
  }
  g_api = api;
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = api->CreateCustomOpDomain(kDomain, &domain)) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &g_op)) {
    api->ReleaseCustomOpDomain(domain);
    return st;
  }
  // The domain must outlive every session using it; it is intentionally
  // never released (one small allocation per registration).
  return api->AddCustomOpDomain(options, domain);
}
