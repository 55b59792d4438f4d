// An adapter's slot image (lora/native.py's layout), written straight from its factors: what an
// adapter read costs is what a request waiting on it waits for, and building the image with
// PyTorch ops took ~10 ms for an r64 q/k/v/o adapter of SmolLM2 (stack, convert, scale, index
// per module), nine passes over its bytes; this is one.
#include <cstring>

#include "kernels.h"

using simd::Elem;

namespace kernels {

template <class T>
void lora_image(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b,
                const std::vector<double>& scales, const std::vector<int64_t>& layers, at::Tensor image_a,
                at::Tensor image_b, int64_t column, int64_t stride, int64_t row_start) {
  using E = Elem<T>;
  T* ia = image_a.data_ptr<T>();
  T* ib = image_b.data_ptr<T>();
  const int64_t a_layer = image_a.stride(0), a_row = image_a.stride(1);
  const int64_t b_layer = image_b.stride(0), b_row = image_b.stride(1);
  for (size_t n = 0; n < a.size(); ++n) {
    const int64_t r = a[n].size(0), fan_in = a[n].size(1), fan_out = b[n].size(0);
    const T* ap = a[n].data_ptr<T>();
    T* dst = ia + layers[n] * a_layer;
    for (int64_t i = 0; i < r; ++i)  // rank i of module j is row i * k + j
      std::memcpy(dst + (column + i * stride) * a_row, ap + i * fan_in, fan_in * sizeof(T));
    // B^T times the scale: the fp32 product rounded to T, as (b.float() * scale).to(T) does
    const float scale = float(scales[n]);
    const T* bp = b[n].data_ptr<T>();
    T* out = ib + layers[n] * b_layer + row_start;
    for (int64_t i = 0; i < r; ++i)
      for (int64_t o = 0; o < fan_out; ++o) out[i * b_row + o] = E::from_f(E::to_f(bp[o * r + i]) * scale);
  }
}

LORASERVE_INSTANTIATE(lora_image, (const std::vector<at::Tensor>&, const std::vector<at::Tensor>&,
                                   const std::vector<double>&, const std::vector<int64_t>&, at::Tensor, at::Tensor,
                                   int64_t, int64_t, int64_t))

}  // namespace kernels
