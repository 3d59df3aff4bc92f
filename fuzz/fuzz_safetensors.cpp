// SPDX-License-Identifier: Apache-2.0
// safetensors bytes -> SafetensorsReader (every tensor, and a row range) and LinearProbe::load
// (a probe is a safetensors file with metadata).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "dinov2/io.hpp"
#include "dinov2/probe.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dinov2::fuzz::require;
  const std::string& path = dinov2::fuzz::write_scratch(data, size, ".safetensors");
  dinov2::fuzz::only_dinov2_errors([&] {
    const dinov2::SafetensorsReader reader(path);
    uint64_t total = 0;
    for (const auto& e : reader.entries()) {
      const at::Tensor t = reader.read(e.name);
      require(t.sizes() == at::IntArrayRef(e.shape), "a tensor has the shape of its entry");
      require(t.scalar_type() == e.dtype, "a tensor has the dtype of its entry");
      total += e.nbytes();
      if (!e.shape.empty() && e.shape[0] > 0) {
        require(reader.read_rows(e.name, 0, 1).size(0) == 1, "read_rows(0, 1) gives one row");
      }
    }
    require(total + 8 <= size, "the tensors fit in the file");
  });
  dinov2::fuzz::only_dinov2_errors([&] {
    const auto probe = dinov2::LinearProbe::load(path);
    require(probe.weight().dim() == 2 && probe.bias().numel() == probe.num_classes(),
            "a probe has [C, F] weights and C biases");
  });
  return 0;
}
