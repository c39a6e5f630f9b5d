// Encoder-side kernel of the Python planner: output-aware rounding (GPTQ)
// within one block of columns. Not used by the decoder.
#pragma once
#include <cstdint>

namespace l2c {

struct GptqBlock {
  double* w;            // (groups, rows, d), C order, permuted columns; updated in place
  int64_t groups, rows, d;
  int64_t start, end;   // the block's columns [start, end)
  const double* u;      // (groups, d, d): upper Cholesky factor of H^-1 (permuted)
  const double* step;   // (groups, rows) > 0
  double theta, dead_zone, qmax;
  const uint8_t* forced_mask;     // (groups, rows, d) or null
  const int32_t* forced_symbols;  // (groups, rows, d) or null
  int32_t* q;           // (groups, rows, d): the block's columns are written
  double* err;          // (groups, rows, end - start)
};

// Quantizes the block's columns one at a time and spreads each column's
// error over the block's later columns (the in-block part of GPTQ); the
// caller updates the columns after the block with one matrix product.
void gptq_block(const GptqBlock& b);

}  // namespace l2c
