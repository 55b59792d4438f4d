"""A native BGMV kernel for the LoRA path on CPU (bf16 weights, fp32 accumulation).

For each token: ``h = A[slot] @ x`` then ``y += h @ B[slot]``, reading only that token's adapter
rows and, for fused groups, only each module's own output columns. Compiled on first use with
``torch.utils.cpp_extension`` (needs a C++ compiler and ninja); when that is not possible the
engine keeps its pure-PyTorch path, which gives the same results.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("loraserve.model")
_SOURCE = r"""
#include <torch/extension.h>
#include <cstring>
#include <vector>

static inline float bf(uint16_t v) {
  uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// x (T, in) bf16; slots (T,) int64 (-1: none); a (S, K, in) bf16; b (S, K, O) bf16;
// out (T, O) bf16, added into.
// Row r of A/B belongs to module r % k, whose output columns are [col_start[j], +col_len[j]).
void bgmv(torch::Tensor x, torch::Tensor slots, torch::Tensor a, torch::Tensor b, torch::Tensor out,
          int64_t k, int64_t used, torch::Tensor col_start, torch::Tensor col_len) {
  const int64_t T = x.size(0), in = x.size(1), K = a.size(1), O = b.size(2);
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const uint16_t* ap = reinterpret_cast<const uint16_t*>(a.data_ptr<at::BFloat16>());
  const uint16_t* bp = reinterpret_cast<const uint16_t*>(b.data_ptr<at::BFloat16>());
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* cs = col_start.data_ptr<int64_t>();
  const int64_t* cl = col_len.data_ptr<int64_t>();
  const int64_t out_stride = out.stride(0);
  #pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t s = sp[t];
    if (s < 0) continue;
    std::vector<float> xf(in), acc(O, 0.0f);
    for (int64_t i = 0; i < in; ++i) xf[i] = bf(xp[t * in + i]);
    for (int64_t r = 0; r < used; ++r) {
      const uint16_t* arow = ap + (s * K + r) * in;
      float h = 0.0f;
      #pragma omp simd reduction(+:h)
      for (int64_t i = 0; i < in; ++i) h += xf[i] * bf(arow[i]);
      if (h == 0.0f) continue;
      const int64_t j = r % k, start = cs[j], len = cl[j];
      const uint16_t* brow = bp + (s * K + r) * O + start;
      float* accp = acc.data() + start;
      #pragma omp simd
      for (int64_t o = 0; o < len; ++o) accp[o] += h * bf(brow[o]);
    }
    at::BFloat16* orow = op + t * out_stride;
    for (int64_t o = 0; o < O; ++o)
      if (acc[o] != 0.0f) orow[o] = at::BFloat16(static_cast<float>(orow[o]) + acc[o]);
  }
}
"""
_kernel = None
_tried = False


def native_bgmv():
    """The compiled kernel, or None (compiled once per machine; cached by torch)."""
    global _kernel, _tried
    if _tried or os.environ.get("LORASERVE_NATIVE_LORA", "1") == "0":
        return _kernel
    _tried = True
    try:
        from torch.utils.cpp_extension import load_inline

        module = load_inline(name="loraserve_bgmv", cpp_sources=[_SOURCE], functions=["bgmv"],
                             extra_cflags=["-O3", "-march=native", "-fopenmp"],
                             extra_ldflags=["-fopenmp"], verbose=False)
        _kernel = module.bgmv
    except Exception as exc:  # no compiler, no ninja, ...: the PyTorch path serves instead
        log.warning("native LoRA kernel unavailable (%s); using the PyTorch path", exc)
    return _kernel
