// SPDX-License-Identifier: Apache-2.0
// .npy bytes -> dinov2::load_npy.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "dinov2/io.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = dinov2::fuzz::write_scratch(data, size, ".npy");
  dinov2::fuzz::only_dinov2_errors([&] {
    const at::Tensor t = dinov2::load_npy(path);
    dinov2::fuzz::require(t.is_contiguous(), "load_npy returns a contiguous tensor");
    dinov2::fuzz::require(static_cast<size_t>(t.nbytes()) <= size, "the data fits in the file");
  });
  return 0;
}
