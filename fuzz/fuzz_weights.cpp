// SPDX-License-Identifier: Apache-2.0
// Weight file bytes (a torch.save checkpoint, or safetensors with Hugging Face names) ->
// dinov2::Model::load: the pickle rewriting and LibTorch's restricted unpickler, the renaming and
// the strict checks. Seeds: toy checkpoints from fuzz/make_seeds.py (scripts/fuzz.sh makes them).
#include <ATen/Parallel.h>

#include "dinov2/model.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size,
                                          unsigned seed) {
  // Half of the archive mutations go to the pickle.
  return dinov2::fuzz::mutate_archive(data, size, max_size, seed, "data.pkl");
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const bool zip = size >= 2 && data[0] == 'P' && data[1] == 'K';
  const std::string& path = dinov2::fuzz::write_scratch(data, size, zip ? ".pth" : ".safetensors");
  dinov2::fuzz::only_dinov2_errors([&] {
    const auto model = dinov2::Model::load(path, dinov2::Options{}.with_max_tokens(64));
    dinov2::fuzz::require(model.info().depth > 0, "a loaded model has blocks");
  });
  return 0;
}
