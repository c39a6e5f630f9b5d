// A whole compressed model through its sidecar index (docs/FORMAT.md,
// "Sidecar index"): the plain graph rebuilt from the model file's bytes by
// the index's copy/insert operations, and every tensor decoded, in parallel,
// into memory the caller hands to onnxruntime (AddExternalInitializers). No
// protobuf is parsed here. Everything read from the two files is validated
// before it is used, in time linear in the files.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#include "model.h"

#include "common.h"
#include "onnx_l2c.h"
#include "payload.h"

namespace l2c {

#if defined(__linux__) && !defined(L2C_ASAN)
#define L2C_MAP_TENSORS 1
constexpr size_t kHugePage = size_t(2) << 20;
#endif

void BufferFree::operator()(uint8_t* p) const {
#ifdef L2C_MAP_TENSORS
  if (mapped_bytes) {
    munmap(p, mapped_bytes);
    return;
  }
#endif
  ::operator delete[](p, std::align_val_t(kTensorAlign));
}

Buffer tensor_buffer(uint64_t n) {
#ifdef L2C_MAP_TENSORS
  if (n >= kHugePage && n <= SIZE_MAX - 2 * kHugePage) {
    // Map one huge page more than needed, keep the 2 MiB-aligned part.
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t keep = (static_cast<size_t>(n) + page - 1) / page * page, span = keep + kHugePage;
    void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw != MAP_FAILED) {
      uint8_t* const first = static_cast<uint8_t*>(raw);
      uint8_t* const start = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw) + kHugePage - 1) &
                                                        ~uintptr_t(kHugePage - 1));
      if (start > first) munmap(first, static_cast<size_t>(start - first));
      if (first + span > start + keep) munmap(start + keep, static_cast<size_t>(first + span - (start + keep)));
      // whole huge pages only: the tail stays in small pages, so no memory is wasted
      madvise(start, static_cast<size_t>(n) / kHugePage * kHugePage, MADV_HUGEPAGE);
      return Buffer(start, BufferFree{keep});
    }
  }
#endif
  // at least one byte: an empty tensor still gets a distinct, valid pointer
  return Buffer(static_cast<uint8_t*>(::operator new[](n ? n : 1, std::align_val_t(kTensorAlign))));
}

namespace {

constexpr char kIndexMagic[4] = {'L', '2', 'C', 'X'};
constexpr char kTrailerMagic[8] = {'L', '2', 'C', 'X', 'E', 'N', 'D', '\0'};
constexpr size_t kTrailerBytes = 32;
constexpr uint8_t kIndexVersion = 1;
constexpr uint8_t kOpCopy = 1, kOpInsert = 2;
constexpr uint64_t kMaxPlainBytes = (uint64_t(1) << 31) - 1;  // one protobuf message

// Whether [p, p + n) is well-formed UTF-8 (no overlong forms, surrogates or
// code points above U+10FFFF): tensor names are ONNX strings.
bool valid_utf8(const uint8_t* p, size_t n) {
  size_t i = 0;
  while (i < n) {
    const uint8_t c = p[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || len > n - i) return false;
    uint32_t cp = len == 1 ? c : c & (0x7f >> len);
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

// A file's bytes: mapped read-only where the platform can (the sidecar's
// payloads are then read straight from the page cache, with no copy and no
// zero-filled buffer), else read into memory.
class FileBytes {
 public:
  FileBytes(const char* path, const char* what) {
    if (!path) fail(L2C_E_ARGUMENT, std::string(what) + " path is NULL");
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec))
      fail(L2C_E_ARGUMENT, std::string("the ") + what + " " + path + " is not a regular file");
#if defined(__unix__) || defined(__APPLE__)
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      struct stat st;
      if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
          static_cast<uint64_t>(st.st_size) <= SIZE_MAX) {
        void* p = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
        if (p != MAP_FAILED) {
          mapped_ = static_cast<const uint8_t*>(p);
          size_ = static_cast<size_t>(st.st_size);
        }
      }
      ::close(fd);
      if (mapped_) return;
    }
#endif
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) fail(L2C_E_ARGUMENT, std::string("cannot open the ") + what + " " + path);
    const std::streamoff size = f.tellg();
    if (size < 0) fail(L2C_E_ARGUMENT, std::string("cannot size the ") + what + " " + path);
    read_.resize(static_cast<size_t>(size));
    f.seekg(0);
    if (size && !f.read(reinterpret_cast<char*>(read_.data()), size))
      fail(L2C_E_ARGUMENT, std::string("cannot read the ") + what + " " + path);
    size_ = read_.size();
  }
  ~FileBytes() {
#if defined(__unix__) || defined(__APPLE__)
    if (mapped_) munmap(const_cast<uint8_t*>(mapped_), size_);
#endif
  }
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;
  const uint8_t* data() const { return mapped_ ? mapped_ : read_.data(); }
  size_t size() const { return size_; }

 private:
  const uint8_t* mapped_ = nullptr;
  std::vector<uint8_t> read_;
  size_t size_ = 0;
};

// The tensor table, from r's position: names, declarations, payload extents
// (inside the payload region, pairwise disjoint: each byte is checked and
// decoded once) and the decode budget. Fills m->tensors (not yet decoded).
void parse_tensors(Reader& r, uint32_t n_tensors, uint64_t payload_end, uint64_t max_decoded_bytes, Model* m) {
  uint64_t total = 0;
  m->tensors.resize(n_tensors);
  for (uint32_t i = 0; i < n_tensors; ++i) {
    Tensor& t = m->tensors[i];
    const std::string what = "sidecar index: tensor " + std::to_string(i);
    const uint16_t name_len = r.u16(what.c_str());
    if (name_len == 0) corrupt(what + " has an empty name");
    const uint8_t* name = r.take(name_len, what.c_str());
    t.name.assign(reinterpret_cast<const char*>(name), name_len);
    if (t.name.find('\0') != std::string::npos || !valid_utf8(name, name_len))
      corrupt(what + " has a name that is not NUL-free UTF-8");
    const uint32_t dtype = r.u32(what.c_str());
    const uint8_t ndim = r.u8(what.c_str());
    if (ndim > L2C_MAX_DIMS) corrupt(what + " '" + t.name + "' has " + std::to_string(ndim) + " dims; valid: 0 to 8");
    for (uint8_t d = 0; d < ndim; ++d) {
      const uint64_t dim = r.u64(what.c_str());
      t.dims[d] = dim > static_cast<uint64_t>(INT64_MAX) ? -1 : static_cast<int64_t>(dim);
    }
    t.declared = check_declared(dtype > 255 ? -1 : static_cast<int64_t>(dtype), t.dims, ndim, 0);
    t.offset = r.u64(what.c_str());
    t.length = r.u64(what.c_str());
    if (t.offset > payload_end || t.length > payload_end - t.offset)
      corrupt(what + " '" + t.name + "': payload [" + std::to_string(t.offset) + ", +" + std::to_string(t.length) +
              ") is outside the sidecar's " + std::to_string(payload_end) + " bytes of payloads");
    if (max_decoded_bytes && t.declared.out_bytes > max_decoded_bytes - std::min(total, max_decoded_bytes))
      fail(L2C_E_LIMIT, "the model's tensors decode to more than the limit of " + std::to_string(max_decoded_bytes) +
                            " bytes (max_decoded_bytes), at tensor '" + t.name + "'");
    total += t.declared.out_bytes;
  }
  if (r.remaining()) corrupt("sidecar index: " + std::to_string(r.remaining()) + " bytes after its last tensor");
  std::vector<const std::string*> names;
  names.reserve(m->tensors.size());
  for (const Tensor& t : m->tensors) names.push_back(&t.name);
  std::sort(names.begin(), names.end(), [](const std::string* a, const std::string* b) { return *a < *b; });
  for (size_t i = 1; i < names.size(); ++i)
    if (*names[i] == *names[i - 1]) corrupt("sidecar index: tensor '" + *names[i] + "' is listed twice");
  std::vector<const Tensor*> by_offset;
  by_offset.reserve(m->tensors.size());
  for (const Tensor& t : m->tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const Tensor* a, const Tensor* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->offset < by_offset[i - 1]->offset + by_offset[i - 1]->length)
      corrupt("sidecar index: the payloads of tensors '" + by_offset[i - 1]->name + "' and '" + by_offset[i]->name +
              "' overlap");
}

// The index record [index, index + size) of a sidecar whose payloads end at
// `payload_end`; the model file `graph`. Fills `m` (tensors not yet decoded).
void parse_index(const uint8_t* index, size_t size, uint64_t payload_end, const uint8_t* graph, size_t graph_size,
                 uint64_t max_decoded_bytes, Model* m) {
  Reader r(index, size);
  const uint8_t* magic = r.take(4, "sidecar index: magic");
  if (std::memcmp(magic, kIndexMagic, 4) != 0) corrupt("sidecar index: bad magic");
  const uint8_t version = r.u8("sidecar index: version");
  if (version != kIndexVersion)
    fail(L2C_E_VERSION, "sidecar index: version " + std::to_string(version) + "; this library reads version 1");
  r.reserved(3, "sidecar index: reserved");
  const uint64_t made_for_size = r.u64("sidecar index: graph size");
  const uint32_t made_for_crc = r.u32("sidecar index: graph CRC");
  const uint64_t plain_size = r.u64("sidecar index: plain graph size");
  const uint32_t n_ops = r.u32("sidecar index: operation count");
  const uint32_t n_tensors = r.u32("sidecar index: tensor count");
  const size_t ops_at = r.pos();
  if (made_for_size != graph_size || crc32(graph, graph_size) != made_for_crc)
    corrupt("the model file (" + std::to_string(graph_size) + " bytes, CRC " + hex32(crc32(graph, graph_size)) +
            ") is not the one its sidecar index was written for (" + std::to_string(made_for_size) + " bytes, CRC " +
            hex32(made_for_crc) + "): it was changed after compression; load it with the custom op, or compress "
            "the model again");
  if (plain_size > kMaxPlainBytes)
    corrupt("sidecar index: plain graph of " + std::to_string(plain_size) + " bytes, over protobuf's 2 GiB");
  // Each operation and tensor takes at least 5 and 23 bytes of the record:
  // the counts are bounded before anything is sized by them.
  if (n_ops > r.remaining() / 5 || n_tensors > r.remaining() / 23)
    corrupt("sidecar index: " + std::to_string(n_ops) + " operations and " + std::to_string(n_tensors) +
            " tensors do not fit its " + std::to_string(size) + " bytes");
  uint64_t built = 0, copied = 0;
  for (uint32_t i = 0; i < n_ops; ++i) {  // sizes first: the plain graph is allocated once
    const uint8_t kind = r.u8("sidecar index: operation");
    uint64_t n = 0;
    if (kind == kOpCopy) {
      const uint64_t at = r.u64("sidecar index: copy offset");
      n = r.u64("sidecar index: copy length");
      if (at > graph_size || n > graph_size - at)
        corrupt("sidecar index: operation " + std::to_string(i) + " copies [" + std::to_string(at) + ", +" +
                std::to_string(n) + ") of a " + std::to_string(graph_size) + "-byte model file");
      // Each byte of the model file is copied at most once (the writer inserts a
      // repeated record): the plain graph stays within the two files' sizes.
      if (n > graph_size - copied)
        corrupt("sidecar index: the operations copy more than the model file's " + std::to_string(graph_size) +
                " bytes");
      copied += n;
    } else if (kind == kOpInsert) {
      n = r.u32("sidecar index: insert length");
      r.take(static_cast<size_t>(n), "sidecar index: inserted bytes");
    } else {
      corrupt("sidecar index: operation " + std::to_string(i) + " has kind " + std::to_string(kind) +
              "; valid: 1 (copy), 2 (insert)");
    }
    if (n > plain_size - built)
      corrupt("sidecar index: the operations build more than the declared " + std::to_string(plain_size) +
              " bytes of plain graph");
    built += n;
  }
  if (built != plain_size)
    corrupt("sidecar index: the operations build " + std::to_string(built) + " bytes, it declares " +
            std::to_string(plain_size));
  const size_t tensors_at = r.pos();
  parse_tensors(r, n_tensors, payload_end, max_decoded_bytes, m);
  m->plain.resize(static_cast<size_t>(plain_size));  // only now: everything else was checked
  Reader ops(index + ops_at, tensors_at - ops_at);  // validated above
  size_t out = 0;
  for (uint32_t i = 0; i < n_ops; ++i) {
    if (ops.u8("op") == kOpCopy) {
      const uint64_t at = ops.u64("op"), n = ops.u64("op");
      if (n) std::memcpy(m->plain.data() + out, graph + at, static_cast<size_t>(n));
      out += static_cast<size_t>(n);
    } else {
      const uint32_t n = ops.u32("op");
      const uint8_t* bytes = ops.take(n, "op");
      if (n) std::memcpy(m->plain.data() + out, bytes, n);
      out += n;
    }
  }
}

// A payload of 1 MiB or more has its CRC checked by another task than its
// decode, so that on several threads a model dominated by one tensor (an
// embedding table) does not wait for both one after the other.
bool crc_apart(const Tensor& t) { return t.length >= (uint64_t(1) << 20); }

// Decodes every tensor on `threads` threads (0: one per core), largest first.
// A decode whose CRC is checked apart runs unchecked (the decoder is safe on
// any bytes) and its result counts only if the CRC passes; a tensor that
// fails reports its CRC error before any other of its errors.
void decode_all(Model* m, const uint8_t* sidecar, int threads) {
  for (Tensor& t : m->tensors) t.data = tensor_buffer(t.declared.out_bytes);
  struct Task {
    size_t tensor;
    bool crc_only;
  };
  std::vector<size_t> order(m->tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return m->tensors[a].declared.out_bytes > m->tensors[b].declared.out_bytes;
  });
  std::vector<Task> tasks;
  for (size_t i : order) {
    tasks.push_back({i, false});
    if (crc_apart(m->tensors[i])) tasks.push_back({i, true});
  }
  struct Failure {
    int code = L2C_OK;
    std::string message;
  };
  std::vector<Failure> crc_failed(m->tensors.size()), decode_failed(m->tensors.size());
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  auto work = [&] {
    for (size_t k = next++; k < tasks.size() && !stop; k = next++) {
      const Task& task = tasks[k];
      Tensor& t = m->tensors[task.tensor];
      Failure& f = task.crc_only ? crc_failed[task.tensor] : decode_failed[task.tensor];
      try {
        const uint8_t* payload = sidecar + t.offset;
        if (task.crc_only) {
          verify_payload_crc(payload, static_cast<size_t>(t.length));
        } else {
          Plan plan;
          parse_payload(payload, static_cast<size_t>(t.length), &plan, 0, false, &t.declared, !crc_apart(t));
          execute(plan, t.data.get());
        }
        continue;
      } catch (const Error& e) {
        f.code = e.code;
        f.message = e.what();
      } catch (const std::bad_alloc&) {
        f.code = L2C_E_MEMORY;
        f.message = "out of memory";
      } catch (const std::exception& e) {  // nothing may leave a thread: std::terminate
        f.code = L2C_E_CORRUPT;
        f.message = std::string("internal error: ") + e.what();
      } catch (...) {
        f.code = L2C_E_CORRUPT;
        f.message = "internal error";
      }
      stop = true;
    }
  };
  unsigned n = threads > 0 ? static_cast<unsigned>(threads) : std::max(1u, std::thread::hardware_concurrency());
  n = static_cast<unsigned>(std::min<size_t>(n, std::max<size_t>(tasks.size(), 1)));
  std::vector<std::thread> pool;
  pool.reserve(n);
  for (unsigned i = 1; i < n; ++i) {
    try {
      pool.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // no more threads to be had (a process limit): those running, and this one, do the work
    }
  }
  work();
  for (std::thread& th : pool) th.join();
  for (size_t i : order) {
    Tensor& t = m->tensors[i];
    if (decode_failed[i].code != L2C_OK && crc_apart(t) && crc_failed[i].code == L2C_OK) {
      try {  // its CRC task may not have run: the CRC's verdict comes first
        verify_payload_crc(sidecar + t.offset, static_cast<size_t>(t.length));
      } catch (const Error& e) {
        crc_failed[i] = {e.code, e.what()};
      }
    }
    const Failure& f = crc_failed[i].code != L2C_OK ? crc_failed[i] : decode_failed[i];
    if (f.code != L2C_OK) fail(f.code, "tensor '" + t.name + "': " + f.message);
  }
}

}  // namespace

Model* open_model(const uint8_t* graph, size_t graph_size, const uint8_t* sidecar, size_t sidecar_size,
                  uint64_t max_decoded_bytes, int threads) {
  if ((!graph && graph_size) || (!sidecar && sidecar_size)) fail(L2C_E_ARGUMENT, "a buffer is NULL");
  if (sidecar_size < kTrailerBytes || std::memcmp(sidecar + sidecar_size - kTrailerBytes, kTrailerMagic, 8) != 0)
    fail(L2C_E_VERSION, "the sidecar has no index (written before onnx_l2c wrote sidecar indexes, or for a model "
                        "with a weight no node reads or a subgraph output): load it with the custom op, or "
                        "compress it again");
  Reader trailer(sidecar + sidecar_size - kTrailerBytes + 8, kTrailerBytes - 8);
  const uint64_t at = trailer.u64("sidecar trailer"), length = trailer.u64("sidecar trailer");
  const uint32_t crc = trailer.u32("sidecar trailer");
  trailer.reserved(4, "sidecar trailer");
  const uint64_t end = sidecar_size - kTrailerBytes;
  if (at > end || length != end - at)
    corrupt("sidecar trailer: index [" + std::to_string(at) + ", +" + std::to_string(length) +
            ") does not end where the trailer starts (" + std::to_string(end) + ")");
  if (crc32(sidecar + at, static_cast<size_t>(length)) != crc)
    corrupt("sidecar index: CRC mismatch (stored " + hex32(crc) + ")");
  if (max_decoded_bytes == 0) max_decoded_bytes = default_decode_limit(at);
  std::unique_ptr<Model> m(new Model);
  parse_index(sidecar + at, static_cast<size_t>(length), at, graph, graph_size,
              max_decoded_bytes == UINT64_MAX ? 0 : max_decoded_bytes, m.get());
  decode_all(m.get(), sidecar, threads);
  return m.release();
}

Model* open_model_files(const char* graph_path, const char* sidecar_path, uint64_t max_decoded_bytes, int threads) {
  const FileBytes graph(graph_path, "model file");
  std::string side = sidecar_path ? std::string(sidecar_path) : std::string(graph_path) + ".l2c";
  const FileBytes sidecar(side.c_str(), "sidecar");
  return open_model(graph.data(), graph.size(), sidecar.data(), sidecar.size(), max_decoded_bytes, threads);
}

}  // namespace l2c
