// SPDX-License-Identifier: Apache-2.0
// Head file bytes -> LinearClassifier / DepthHead / SegmentationHead::load, then the head on
// block outputs of the width and block count its file declares.
// Seeds: toy heads from fuzz/make_seeds.py (scripts/fuzz.sh makes them).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "dinov2/heads.hpp"
#include "fuzz_support.hpp"

namespace {

/// L block outputs of a 2 x 2 patch grid (14-pixel patches), width D, batch 1.
dinov2::LayerFeatures blocks(const dinov2::HeadInfo& info) {
  dinov2::LayerFeatures f;
  dinov2::PatchGrid grid;
  grid.rows = grid.cols = 2;
  grid.patch_size = 14;
  for (const int64_t b : info.blocks) {
    f.indices.push_back(b);
    f.patches.push_back(at::ones({1, 2, 2, info.embed_dim}));
    f.cls.push_back(at::ones({1, info.embed_dim}));
    f.grids.push_back(grid);
  }
  return f;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size,
                                          unsigned seed) {
  return dinov2::fuzz::mutate_archive(data, size, max_size, seed, "dinov2/head.json");
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dinov2::fuzz::only_dinov2_errors;
  using dinov2::fuzz::require;
  const std::string& path = dinov2::fuzz::write_scratch(data, size, ".pt");
  // Each loader refuses the other kinds by name after reading the file, so all three run.
  only_dinov2_errors([&] {
    const auto head = dinov2::LinearClassifier::load(path);
    const auto logits = head.logits(blocks(head.info()));
    require(logits.dim() == 2 && logits.size(0) == 1, "classifier logits are [1, C]");
    if (logits.size(1) > 0) head.top_k(logits, 1);
  });
  only_dinov2_errors([&] {
    const auto head = dinov2::DepthHead::load(path);
    const auto depth = head.predict(blocks(head.info()), 28, 28);
    require(depth.sizes() == at::IntArrayRef({1, 28, 28}), "depth is [1, 28, 28]");
  });
  only_dinov2_errors([&] {
    const auto head = dinov2::SegmentationHead::load(path);
    const auto logits = head.logits(blocks(head.info()));
    require(logits.dim() == 4 && logits.size(2) == 2 && logits.size(3) == 2,
            "segmentation logits are [1, C, 2, 2]");
  });
  return 0;
}
