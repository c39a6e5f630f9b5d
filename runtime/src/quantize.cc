// The in-block loop of output-aware rounding (passes/gptq.py). Each value is
// computed with the same IEEE operations, in the same order, as the numpy
// expressions it replaces (and -ffp-contract=off keeps them unfused), so the
// symbols are bit for bit those of the numpy loop; it runs without the GIL.
#include "quantize.h"

#include <cmath>

namespace l2c {
namespace {

inline double sign(double x) { return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0); }

}  // namespace

void gptq_block(const GptqBlock& b) {
  const int64_t width = b.end - b.start;
  for (int64_t g = 0; g < b.groups; ++g) {
    const double* u = b.u + g * b.d * b.d;
    for (int64_t r = 0; r < b.rows; ++r) {
      const int64_t row = g * b.rows + r;
      double* w = b.w + row * b.d;
      int32_t* q = b.q + row * b.d;
      double* err = b.err + row * width;
      const double s = b.step[row];
      const uint8_t* mask = b.forced_mask ? b.forced_mask + row * b.d : nullptr;
      const int32_t* forced = b.forced_symbols ? b.forced_symbols + row * b.d : nullptr;
      for (int64_t i = b.start; i < b.end; ++i) {
        const double col = w[i];
        // round to nearest with a dead zone (gptq._quantize_nearest)
        const double a = std::fabs(col) / s;
        double level = a < 0.5 + b.dead_zone ? 0.0 : std::floor(a + 0.5);
        // min(level, qmax), written so that a NaN (never given by the
        // planner) becomes qmax, times sign 0: no out-of-range conversion
        level = level < b.qmax ? level : b.qmax;
        int32_t qi = static_cast<int32_t>(sign(col) * level);
        if (mask && mask[i]) qi = forced[i];
        q[i] = qi;
        // dequantize (gptq.dequantize), then the error scaled by U's diagonal
        const double qd = static_cast<double>(qi);
        const double e = (col - (qd - sign(qd) * b.theta) * s) / u[i * b.d + i];
        err[i - b.start] = e;
        const double* ui = u + i * b.d;
        for (int64_t j = i + 1; j < b.end; ++j) w[j] -= e * ui[j];
      }
    }
  }
}

}  // namespace l2c
