// The one TORCH_LIBRARY block that owns the `onerec_C` namespace; op families add their schemas
// and kernels with TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL in their own files.
#include <torch/library.h>

TORCH_LIBRARY(onerec_C, m) {
  (void)m;
}
