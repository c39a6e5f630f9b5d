// Stream coding: constant / stored / interleaved rANS (docs/FORMAT.md).
#include "stream.h"

#include <algorithm>
#include <cmath>
#include <queue>

namespace l2c {
namespace {

inline uint32_t rd16(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8);
}
inline uint32_t rd32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

size_t varint_size(uint32_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// ---------------------------------------------------------------- decoding

// Two decode tables, one step each. A table maps a slot (x mod 2^scale_bits)
// to the symbol's output value, its frequency and the slot's bias (slot -
// cum). The wide one holds any stream: value (offset applied) | freq << 32 |
// bias << 48, 8 bytes a slot, up to 512 KiB. The compact one holds streams
// of at most 256 symbols at scale_bits <= kCompactScaleBits: index | freq << 8
// | bias << 20, 4 bytes a slot, at most 16 KiB, so it stays in L1.
inline int32_t slot_value(uint64_t e, int32_t) { return static_cast<int32_t>(static_cast<uint32_t>(e)); }
inline int32_t slot_value(uint32_t e, int32_t offset) { return static_cast<int32_t>(e & 0xff) + offset; }

// One decode step of one lane: the state before renormalisation.
inline uint32_t rans_step(uint32_t x, uint64_t e, uint32_t sb) {
  return static_cast<uint32_t>((e >> 32) & 0xffff) * (x >> sb) + static_cast<uint32_t>(e >> 48);
}
inline uint32_t rans_step(uint32_t x, uint32_t e, uint32_t sb) { return ((e >> 8) & 0xfff) * (x >> sb) + (e >> 20); }

// Fast path for N lanes: whole blocks of N symbols while at least N words
// (2N bytes) remain, so no per-word bounds check is needed. Lane 0 must be
// next. Advances *done (symbols produced), state and *pp. Out of line: its
// eight lanes need most registers, and inlined into next_rans it ran 4% slower.
template <int N, class T, class Slot>
L2C_NOINLINE void rans_fast(const Slot* tab, int32_t offset, uint32_t sb, uint32_t* state, T* out, uint64_t n, uint64_t* done,
               const uint8_t** pp, const uint8_t* pe) {
  const uint32_t mask = (1u << sb) - 1;
  uint32_t x[N];
  for (int j = 0; j < N; ++j) x[j] = state[j];
  const uint8_t* p = *pp;
  uint64_t i = *done;
  while (n - i >= static_cast<uint64_t>(N) && pe - p >= 2 * N) {
#pragma GCC unroll 32
    for (int j = 0; j < N; ++j) {
      const Slot e = tab[x[j] & mask];
      out[i + j] = static_cast<T>(slot_value(e, offset));
      const uint32_t y = rans_step(x[j], e, sb);
      // Branch-free renormalisation (the branch is unpredictable).
      const uint32_t r = y < kRansL;
      const uint32_t m = 0u - r;
      x[j] = (((y << 16) | rd16(p)) & m) | (y & ~m);
      p += 2 * r;
    }
    i += N;
  }
  for (int j = 0; j < N; ++j) state[j] = x[j];
  *pp = p;
  *done = i;
}

}  // namespace

StreamDecoder::StreamDecoder(const Stream& s, int32_t offset, const std::string& what)
    : s_(s), offset_(offset), what_(what) {
  if (s.mode != kRans) return;
  const bool compact = s.scale_bits <= kCompactScaleBits && s.max_index < 256;
  if (compact)
    compact_.resize(size_t(1) << s.scale_bits);
  else
    tab_.resize(size_t(1) << s.scale_bits);
  uint32_t cum = 0;
  for (size_t k = 0; k < s.symbols.size(); ++k) {
    const uint32_t f = s.freqs[k];  // < 2^scale_bits: a stream lists at least two symbols
    if (compact) {
      for (uint32_t b = 0; b < f; ++b) compact_[cum + b] = s.symbols[k] | (f << 8) | (b << 20);
    } else {
      const int32_t v = static_cast<int32_t>(static_cast<int64_t>(s.symbols[k]) + offset);
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      for (uint32_t b = 0; b < f; ++b)
        tab_[cum + b] = bits | (static_cast<uint64_t>(f) << 32) | (static_cast<uint64_t>(b) << 48);
    }
    cum += f;
  }
  for (uint32_t j = 0; j < s.lanes; ++j) x_[j] = rd32(s.data + 4 * j);
  p_ = s.data + 4 * s.lanes;
  pe_ = s.data + s.data_size;
}

template <class T>
void StreamDecoder::next(T* out, uint64_t n) {
  if (n > s_.count - pos_) corrupt(what_ + ": internal error: reading past the stream's count");
  switch (s_.mode) {
    case kConstant:
      std::fill(out, out + n, static_cast<T>(static_cast<int64_t>(s_.alphabet - 1) + offset_));
      break;
    case kStored: {
      const bool wide = s_.alphabet > 256;
      const uint8_t* d = s_.data + (wide ? 2 : 1) * pos_;
      check_stored(d, n);
      if (wide) {
        for (uint64_t i = 0; i < n; ++i) out[i] = static_cast<T>(static_cast<int64_t>(rd16(d + 2 * i)) + offset_);
      } else if (sizeof(T) == 1 && offset_ == 0) {
        std::memcpy(out, d, n);
      } else {
        for (uint64_t i = 0; i < n; ++i) out[i] = static_cast<T>(static_cast<int32_t>(d[i]) + offset_);
      }
      break;
    }
    default:
      if (!compact_.empty())
        next_rans(compact_.data(), out, n);
      else
        next_rans(tab_.data(), out, n);
  }
  pos_ += n;
}

// The range check first, as one branch-free pass (vectorised), then the copy:
// the low mantissa bytes of float weights are stored streams, and a check
// inside the copy loop kept it from vectorising.
void StreamDecoder::check_stored(const uint8_t* d, uint64_t n) const {
  const bool wide = s_.alphabet > 256;
  uint32_t top = 0;
  if (wide) {
    for (uint64_t i = 0; i < n; ++i) top = std::max<uint32_t>(top, rd16(d + 2 * i));
  } else if (s_.alphabet < 256) {
    for (uint64_t i = 0; i < n; ++i) top = std::max<uint32_t>(top, d[i]);
  }
  if (top < s_.alphabet) return;
  uint64_t at = 0;
  while ((wide ? rd16(d + 2 * at) : d[at]) < s_.alphabet) ++at;
  corrupt(what_ + ": stored index " + std::to_string(wide ? rd16(d + 2 * at) : d[at]) + " at position " +
          std::to_string(pos_ + at) + " is outside the alphabet [0, " + std::to_string(s_.alphabet) + ")");
}

const uint8_t* StreamDecoder::next_bytes(uint8_t* scratch, uint64_t n) {
  if (s_.mode != kStored || s_.alphabet > 256 || offset_ != 0) {
    next(scratch, n);
    return scratch;
  }
  if (n > s_.count - pos_) corrupt(what_ + ": internal error: reading past the stream's count");
  const uint8_t* d = s_.data + pos_;
  check_stored(d, n);
  pos_ += n;
  return d;
}

template <class Slot, class T>
void StreamDecoder::next_rans(const Slot* tab, T* out, uint64_t n) {
  const uint32_t sb = s_.scale_bits;
  const uint32_t mask = (1u << sb) - 1;
  const uint32_t lanes = s_.lanes;
  uint64_t i = 0;
  if (lanes == 8 && lane_ == 0) rans_fast<8>(tab, offset_, sb, x_, out, n, &i, &p_, pe_);
  // Checked path: other lane counts and the tail of the stream.
  uint32_t j = lane_;
  for (; i < n; ++i) {
    const Slot e = tab[x_[j] & mask];
    out[i] = static_cast<T>(slot_value(e, offset_));
    uint32_t y = rans_step(x_[j], e, sb);
    if (y < kRansL) {
      if (pe_ - p_ < 2)
        corrupt(what_ + ": rANS data ends early (symbol " + std::to_string(pos_ + i) + " of " +
                std::to_string(s_.count) + " needs another word)");
      y = (y << 16) | rd16(p_);
      p_ += 2;
    }
    x_[j] = y;
    if (++j == lanes) j = 0;
  }
  lane_ = j;
}

template void StreamDecoder::next<int32_t>(int32_t*, uint64_t);
template void StreamDecoder::next<uint8_t>(uint8_t*, uint64_t);

void StreamDecoder::finish() const {
  if (pos_ != s_.count) corrupt(what_ + ": internal error: stream not fully decoded");
  if (s_.mode != kRans) return;
  for (uint32_t j = 0; j < s_.lanes; ++j)
    if (x_[j] != kRansL)
      corrupt(what_ + ": rANS final state of lane " + std::to_string(j) + " is " + hex32(x_[j]) +
              ", expected 0x00010000 (corrupt data)");
  if (p_ != pe_)
    corrupt(what_ + ": rANS data not fully consumed (" + std::to_string((pe_ - p_) / 2) +
            " words left over)");
}

void decode_stream(const Stream& s, int32_t* out, int32_t offset, const std::string& what) {
  StreamDecoder d(s, offset, what);
  d.next(out, s.count);
  d.finish();
}

void decode_stream(const Stream& s, uint8_t* out, const std::string& what) {
  if (s.max_index > 255) corrupt(what + ": byte stream has alphabet above 256");
  StreamDecoder d(s, 0, what);
  d.next(out, s.count);
  d.finish();
}

namespace {

// ---------------------------------------------------------------- encoding

// Normalises counts (all > 0, summing to total) to frequencies >= 1 summing
// to 2^sb, with integer arithmetic only. Starts from rounded proportional
// values and fixes the sum greedily: adds to the symbols where one more slot
// saves the most bits (~ c / (f + 1/2)), takes from those where one slot
// less costs the least (~ c / (f - 1/2)). Ties go to the lower symbol.
std::vector<uint32_t> normalize(const std::vector<uint64_t>& cnt, uint64_t total, uint32_t sb) {
  const uint64_t M = uint64_t(1) << sb;
  const size_t n = cnt.size();
  std::vector<uint32_t> f(n);
  int64_t sum = 0;
  for (size_t k = 0; k < n; ++k) {
    uint64_t v = (cnt[k] * M * 2 + total) / (total * 2);  // cnt <= 2^40, M <= 2^16
    f[k] = static_cast<uint32_t>(std::max<uint64_t>(v, 1));
    sum += f[k];
  }
  int64_t delta = static_cast<int64_t>(M) - sum;
  if (delta > 0) {
    // benefit of +1: cnt / (2f + 1); max first.
    auto worse = [&](uint32_t a, uint32_t b) {
      uint64_t lhs = cnt[a] * (2 * uint64_t(f[b]) + 1), rhs = cnt[b] * (2 * uint64_t(f[a]) + 1);
      return lhs != rhs ? lhs < rhs : a > b;
    };
    std::priority_queue<uint32_t, std::vector<uint32_t>, decltype(worse)> heap(worse);
    for (uint32_t k = 0; k < n; ++k) heap.push(k);
    for (; delta > 0; --delta) {
      uint32_t k = heap.top();
      heap.pop();
      ++f[k];
      heap.push(k);
    }
  } else if (delta < 0) {
    // cost of -1: cnt / (2f - 1); min first; only symbols with f > 1.
    auto worse = [&](uint32_t a, uint32_t b) {
      uint64_t lhs = cnt[a] * (2 * uint64_t(f[b]) - 1), rhs = cnt[b] * (2 * uint64_t(f[a]) - 1);
      return lhs != rhs ? lhs > rhs : a > b;
    };
    std::priority_queue<uint32_t, std::vector<uint32_t>, decltype(worse)> heap(worse);
    for (uint32_t k = 0; k < n; ++k)
      if (f[k] > 1) heap.push(k);
    for (; delta < 0; ++delta) {
      uint32_t k = heap.top();  // non-empty: sum > M >= n means some f > 1
      heap.pop();
      --f[k];
      if (f[k] > 1) heap.push(k);
    }
  }
  return f;
}

size_t table_size(const std::vector<uint32_t>& syms, const std::vector<uint32_t>& f) {
  size_t n = varint_size(static_cast<uint32_t>(syms.size()));
  for (size_t k = 0; k < syms.size(); ++k) {
    uint32_t gap = k == 0 ? syms[0] : syms[k] - syms[k - 1] - 1;
    n += varint_size(gap) + varint_size(f[k] - 1);
  }
  return n;
}

void put_header(std::vector<uint8_t>* out, uint8_t mode, uint8_t sb, uint8_t lanes,
                uint64_t count, uint32_t alphabet) {
  put_u8(*out, mode);
  put_u8(*out, sb);
  put_u8(*out, lanes);
  put_u8(*out, 0);
  put_u64(*out, count);
  put_u32(*out, alphabet);
}

constexpr uint32_t kEncodeLanes = 8;

void rans_encode(const int32_t* idx, uint64_t count, uint32_t alphabet, uint32_t sb,
                 const std::vector<uint32_t>& syms, const std::vector<uint32_t>& f,
                 std::vector<uint8_t>* out) {
  std::vector<uint32_t> freq(alphabet, 0), cum(alphabet, 0);
  uint32_t c = 0;
  for (size_t k = 0; k < syms.size(); ++k) {
    freq[syms[k]] = f[k];
    cum[syms[k]] = c;
    c += f[k];
  }
  const uint64_t xmax_unit = uint64_t((kRansL >> sb) << 16);
  uint32_t x[kEncodeLanes];
  for (auto& v : x) v = kRansL;
  std::vector<uint16_t> words;
  for (uint64_t i = count; i-- > 0;) {
    uint32_t& xj = x[i % kEncodeLanes];
    const uint32_t s = static_cast<uint32_t>(idx[i]);
    const uint32_t fs = freq[s];
    const uint64_t xmax = xmax_unit * fs;
    while (xj >= xmax) {
      words.push_back(static_cast<uint16_t>(xj & 0xffff));
      xj >>= 16;
    }
    xj = ((xj / fs) << sb) + (xj % fs) + cum[s];
  }
  put_header(out, kRans, static_cast<uint8_t>(sb), kEncodeLanes, count, alphabet);
  put_varint(*out, static_cast<uint32_t>(syms.size()));
  for (size_t k = 0; k < syms.size(); ++k) {
    put_varint(*out, k == 0 ? syms[0] : syms[k] - syms[k - 1] - 1);
    put_varint(*out, f[k] - 1);
  }
  put_u64(*out, 4 * uint64_t(kEncodeLanes) + 2 * uint64_t(words.size()));
  for (uint32_t j = 0; j < kEncodeLanes; ++j) put_u32(*out, x[j]);
  const size_t base = out->size();
  out->resize(base + 2 * words.size());
  uint8_t* w = out->data() + base;
  for (size_t k = words.size(); k-- > 0;) {
    *w++ = static_cast<uint8_t>(words[k]);
    *w++ = static_cast<uint8_t>(words[k] >> 8);
  }
}

}  // namespace

void parse_stream(Reader& r, uint64_t expected_count, const std::string& what, Stream* s) {
  const char* w = what.c_str();
  s->mode = r.u8(w);
  s->scale_bits = r.u8(w);
  s->lanes = r.u8(w);
  r.reserved(1, w);
  s->count = r.u64(w);
  s->alphabet = r.u32(w);
  if (s->count != expected_count)
    corrupt(what + ": stream holds " + std::to_string(s->count) + " indices, expected " +
            std::to_string(expected_count));
  switch (s->mode) {
    case kConstant:
      if (s->scale_bits != 0 || s->lanes != 0)
        corrupt(what + ": constant stream must have scale_bits = lanes = 0");
      if (s->alphabet == 0 || s->alphabet > kMaxAlphabet)
        corrupt(what + ": constant stream has invalid alphabet " + std::to_string(s->alphabet) +
                " (valid: 1..65536)");
      s->max_index = s->alphabet - 1;
      return;
    case kStored: {
      if (s->scale_bits != 0 || s->lanes != 0)
        corrupt(what + ": stored stream must have scale_bits = lanes = 0");
      if (s->alphabet == 0 || s->alphabet > kMaxAlphabet)
        corrupt(what + ": stored stream has invalid alphabet " + std::to_string(s->alphabet) +
                " (valid: 1..65536)");
      const uint64_t width = s->alphabet > 256 ? 2 : 1;
      uint64_t bytes;
      if (mul_overflow(s->count, width, &bytes) || bytes > r.remaining())
        corrupt(what + ": " + std::to_string(s->count) + " stored " + std::to_string(width) +
                "-byte indices need " + std::to_string(s->count) + "*" + std::to_string(width) +
                " bytes but only " + std::to_string(r.remaining()) + " remain");
      s->data = r.take(static_cast<size_t>(bytes), w);
      s->data_size = static_cast<size_t>(bytes);
      s->max_index = s->alphabet - 1;
      return;
    }
    case kRans:
      break;
    default:
      corrupt(what + ": unknown stream mode " + std::to_string(s->mode));
  }
  const uint32_t sb = s->scale_bits;
  if (sb < 1 || sb > 16) corrupt(what + ": rANS scale_bits " + std::to_string(sb) + " not in 1..16");
  if (s->lanes < 1 || s->lanes > 32)
    corrupt(what + ": rANS lanes " + std::to_string(s->lanes) + " not in 1..32");
  if (s->alphabet < 2 || s->alphabet > kMaxAlphabet)
    corrupt(what + ": rANS alphabet " + std::to_string(s->alphabet) + " not in 2..65536");
  const uint64_t M = uint64_t(1) << sb;
  const uint32_t npresent = r.varint(w);
  if (npresent < 2 || npresent > s->alphabet || npresent > M)
    corrupt(what + ": rANS table lists " + std::to_string(npresent) +
            " symbols (need 2..min(alphabet, 2^scale_bits))");
  s->symbols.resize(npresent);
  s->freqs.resize(npresent);
  uint64_t sym = 0, sum = 0, fmax = 0;
  for (uint32_t k = 0; k < npresent; ++k) {
    const uint64_t gap = r.varint(w);
    sym = k == 0 ? gap : sym + 1 + gap;
    if (sym >= s->alphabet)
      corrupt(what + ": rANS table symbol " + std::to_string(sym) + " outside alphabet " +
              std::to_string(s->alphabet));
    const uint64_t f = uint64_t(r.varint(w)) + 1;
    sum += f;
    if (sum > M) corrupt(what + ": rANS frequencies exceed 2^scale_bits");
    s->symbols[k] = static_cast<uint32_t>(sym);
    s->freqs[k] = static_cast<uint32_t>(f);
    fmax = std::max(fmax, f);
  }
  if (sum != M)
    corrupt(what + ": rANS frequencies sum to " + std::to_string(sum) + ", expected " +
            std::to_string(M));
  s->max_index = static_cast<uint32_t>(sym);
  const uint64_t data_size = r.u64(w);
  const uint64_t state_bytes = 4 * uint64_t(s->lanes);
  if (data_size < state_bytes || (data_size - state_bytes) % 2 != 0)
    corrupt(what + ": invalid rANS data_size " + std::to_string(data_size));
  if (data_size > r.remaining())
    corrupt(what + ": rANS data truncated: needs " + std::to_string(data_size) + " bytes, " +
            std::to_string(r.remaining()) + " remain");
  s->data = r.take(static_cast<size_t>(data_size), w);
  s->data_size = static_cast<size_t>(data_size);
  for (uint32_t j = 0; j < s->lanes; ++j) {
    const uint32_t x = rd32(s->data + 4 * j);
    if (x < kRansL) corrupt(what + ": rANS initial state of lane " + std::to_string(j) + " < 2^16");
  }
  // Every symbol shrinks a state by a factor <= 1 - (M - fmax) / (2M); every
  // word grows it by < 2^17. Bound the symbols the data can possibly hold.
  const double words = static_cast<double>((data_size - state_bytes) / 2);
  const double bound = (16.0 * s->lanes + 17.0 * words) * 2.0 * static_cast<double>(M) /
                           static_cast<double>(M - fmax) + 64.0;
  if (static_cast<double>(s->count) > bound)
    corrupt(what + ": " + std::to_string(s->count) + " symbols cannot fit in " +
            std::to_string(data_size) + " bytes of rANS data");
}

void encode_stream(const int32_t* idx, uint64_t count, uint32_t alphabet, uint32_t max_sb,
                   std::vector<uint8_t>* out) {
  if (alphabet == 0) fail(L2C_E_ARGUMENT, "alphabet must be at least 1");
  if (max_sb == 0) max_sb = 16;
  if (max_sb > 16) fail(L2C_E_ARGUMENT, "max_scale_bits must be 0..16");
  if (count > (uint64_t(1) << 40)) fail(L2C_E_ARGUMENT, "count exceeds 2^40");
  if (count > 0 && !idx) fail(L2C_E_ARGUMENT, "indices is NULL");
  uint32_t maxv = 0;
  bool distinct = false;
  const int32_t first = count ? idx[0] : 0;
  for (uint64_t i = 0; i < count; ++i) {
    const int32_t v = idx[i];
    if (v < 0 || static_cast<uint32_t>(v) >= alphabet)
      fail(L2C_E_ARGUMENT, "index " + std::to_string(v) + " at position " + std::to_string(i) +
                               " is outside [0, " + std::to_string(alphabet) + ")");
    maxv = std::max(maxv, static_cast<uint32_t>(v));
    distinct |= v != first;
  }
  if (!distinct) {  // constant: alphabet field = the index + 1
    put_header(out, kConstant, 0, 0, count, static_cast<uint32_t>(first) + 1);
    return;
  }
  if (maxv > 65535)
    fail(L2C_E_ARGUMENT, "stream with distinct indices needs indices < 65536 (max is " +
                             std::to_string(maxv) + ")");
  const uint32_t abc = maxv + 1;  // stored alphabet: tightest bound
  std::vector<uint64_t> hist(abc, 0);
  for (uint64_t i = 0; i < count; ++i) ++hist[static_cast<uint32_t>(idx[i])];
  std::vector<uint32_t> syms;
  std::vector<uint64_t> cnt;
  for (uint32_t v = 0; v < abc; ++v)
    if (hist[v]) {
      syms.push_back(v);
      cnt.push_back(hist[v]);
    }
  const uint64_t stored_size = kStreamHeaderSize + count * (abc > 256 ? 2 : 1);
  const uint64_t total = count;

  // Pick scale_bits by estimated size (table + ideal code length + states);
  // strict '<' keeps the smaller scale_bits on ties.
  uint32_t needed = 1;
  while ((uint64_t(1) << needed) < syms.size()) ++needed;
  double best = 1e300;
  uint32_t best_sb = 0;
  std::vector<uint32_t> best_f;
  for (uint32_t sb = needed; sb <= max_sb; ++sb) {
    std::vector<uint32_t> f = normalize(cnt, count, sb);
    double bits = 0;
    for (size_t k = 0; k < f.size(); ++k)
      bits += static_cast<double>(cnt[k]) * (sb - std::log2(static_cast<double>(f[k])));
    // rANS's own redundancy grows as 2^scale_bits approaches L = 2^16:
    // measured ~0.004 * (2^sb / L)^2 bits per symbol.
    const double ratio = static_cast<double>(uint64_t(1) << sb) / kRansL;
    bits += 0.004 * ratio * ratio * static_cast<double>(total);
    const double est = kStreamHeaderSize + table_size(syms, f) + 8 + 4.0 * kEncodeLanes +
                       2.0 * std::ceil(bits / 16);
    if (est < best) {
      best = est;
      best_sb = sb;
      best_f.swap(f);
    }
  }
  const size_t base = out->size();
  if (best_sb && best < 1.01 * static_cast<double>(stored_size) + 64) {
    rans_encode(idx, count, abc, best_sb, syms, best_f, out);
    // rANS must save at least 1/64 of the stored size: below that (e.g. the
    // low mantissa bytes of float weights) a stored stream decodes several
    // times faster for a negligible size cost.
    if ((out->size() - base) * 64 <= stored_size * 63) return;
    out->resize(base);
  }
  put_header(out, kStored, 0, 0, count, abc);
  out->resize(base + static_cast<size_t>(stored_size));
  uint8_t* p = out->data() + base + kStreamHeaderSize;
  for (uint64_t i = 0; i < count; ++i) {
    if (abc > 256) {
      *p++ = static_cast<uint8_t>(idx[i]);
      *p++ = static_cast<uint8_t>(idx[i] >> 8);
    } else {
      *p++ = static_cast<uint8_t>(idx[i]);
    }
  }
}

}  // namespace l2c
