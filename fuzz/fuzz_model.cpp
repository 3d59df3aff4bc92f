// SPDX-License-Identifier: Apache-2.0
// Model file bytes -> dinov2::Model::load -> one forward pass on a 2 x 3 patch input.
// Seeds: toy backbones from fuzz/make_seeds.py (scripts/fuzz.sh makes them).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "dinov2/model.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size,
                                          unsigned seed) {
  return dinov2::fuzz::mutate_archive(data, size, max_size, seed, "dinov2/metadata.json");
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = dinov2::fuzz::write_scratch(data, size, ".pt");
  dinov2::fuzz::only_dinov2_errors([&] {
    // A token cap keeps a file that claims a huge patch grid from sizing a huge input.
    const auto model = dinov2::Model::load(path, dinov2::Options{}.with_max_tokens(64));
    const int64_t p = model.info().patch_size;
    const auto f = model.extract_features(at::zeros({1, 3, 2 * p, 3 * p}));
    const int64_t d = model.info().embed_dim;
    dinov2::fuzz::require(f.cls.sizes() == at::IntArrayRef({1, d}), "cls is [1, D]");
    dinov2::fuzz::require(f.patches.sizes() == at::IntArrayRef({1, 2, 3, d}),
                          "patches are [1, 2, 3, D]");
  });
  return 0;
}
