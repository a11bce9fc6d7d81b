// The CHECK macro of the CTest executables: report a failed condition with file and line,
// count it, keep going; main() returns non-zero when g_failures > 0.
#pragma once
#include <cstdio>

static int g_failures = 0;
#define CHECK(cond, ...)                                        \
  do {                                                          \
    if (!(cond)) {                                              \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      std::fprintf(stderr, __VA_ARGS__);                        \
      std::fprintf(stderr, "\n");                               \
      ++g_failures;                                             \
    }                                                           \
  } while (0)

#include <cstdint>
#include <limits>

// Brute-force oracle shared by the CTest executables: the nearest of k codes (row-major (k, d))
// to row r in double, the runner-up distance (to recognise genuine near-ties) and, if asked,
// every squared distance.
struct Nearest {
  int64_t arg = 0;
  double best = std::numeric_limits<double>::infinity();
  double second = std::numeric_limits<double>::infinity();
};

template <typename R, typename C>
inline Nearest brute_nearest(const R* r, const C* codes, int64_t k, int64_t d,
                             double* dist = nullptr) {
  Nearest out;
  for (int64_t j = 0; j < k; ++j) {
    double s = 0;
    for (int64_t t = 0; t < d; ++t) {
      const double v = double(r[t]) - double(codes[j * d + t]);
      s += v * v;
    }
    if (dist != nullptr) dist[j] = s;
    if (s < out.best) {
      out.second = out.best;
      out.best = s;
      out.arg = j;
    } else if (s < out.second) {
      out.second = s;
    }
  }
  return out;
}
