// llamita's matmul operators on AArch64 with the dot-product extension: neon.h's blocks over
// the shared layouts and driver (common.h). Packing and dequantization come from portable.cpp.

#include "common.h"
#include "neon.h"

#include <ATen/core/Tensor.h>
#include <torch/library.h>

namespace {

using LLAMITA_OPS::kNeonMaxTile;

at::Tensor q4_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales) {
  return LLAMITA_OPS::q4_mm<LLAMITA_OPS::Q4AffineNeon, kNeonMaxTile>(x, codes, scales, LLAMITA_OPS::quantize_activations);
}

at::Tensor q4k_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& meta) {
  return LLAMITA_OPS::q4k_mm<LLAMITA_OPS::Q4KNeon, kNeonMaxTile>(x, codes, meta, LLAMITA_OPS::quantize_activations);
}

at::Tensor q8_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales) {
  return LLAMITA_OPS::q8_mm<LLAMITA_OPS::Q8BlockNeon, kNeonMaxTile>(x, codes, scales, LLAMITA_OPS::quantize_activations);
}

at::Tensor q8b_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales) {
  return LLAMITA_OPS::q8b_mm<LLAMITA_OPS::Q8BBlockNeon, kNeonMaxTile>(x, codes, scales, LLAMITA_OPS::quantize_activations);
}

at::Tensor q6k_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& meta) {
  return LLAMITA_OPS::q6k_mm<LLAMITA_OPS::Q6KBlockNeon, kNeonMaxTile>(x, codes, meta, LLAMITA_OPS::quantize_activations);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(LLAMITA_OPS, m) {
  m.def("q4_vnni_mm(Tensor x, Tensor codes, Tensor scales) -> Tensor");
  m.def("q4k_vnni_mm(Tensor x, Tensor codes, Tensor meta) -> Tensor");
  m.def("q8_vnni_mm(Tensor x, Tensor codes, Tensor scales) -> Tensor");
  m.def("q6k_vnni_mm(Tensor x, Tensor codes, Tensor meta) -> Tensor");
  m.def("q8b_vnni_mm(Tensor x, Tensor codes, Tensor scales) -> Tensor");
}
TORCH_LIBRARY_IMPL(LLAMITA_OPS, CPU, m) {
  m.impl("q4_vnni_mm", q4_vnni_mm);
  m.impl("q4k_vnni_mm", q4k_vnni_mm);
  m.impl("q8_vnni_mm", q8_vnni_mm);
  m.impl("q6k_vnni_mm", q6k_vnni_mm);
  m.impl("q8b_vnni_mm", q8b_vnni_mm);
}
