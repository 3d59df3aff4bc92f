// SPDX-License-Identifier: Apache-2.0
// Pipeline: files, encoded bytes and cv::Mats in, per-image features or failures out, in input
// order; the features equal those of the same image preprocessed and run alone; memory is bounded
// by the windows; cancelling and a throwing callback stop the run cleanly.
#include "dinov2/pipeline.hpp"

#include <ATen/ATen.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "dinov2/error.hpp"
#include "dinov2/model.hpp"
#include "dinov2/opencv.hpp"
#include "support.hpp"

namespace {

using dinov2::ImageFeatures;
using dinov2::ImageSource;
using dinov2::Pipeline;
using dinov2::PipelineOptions;
using dinov2::Recipe;
using dinov2::test::ContainsSubstring;
using dinov2::test::data_path;
using dinov2::test::max_abs_diff;
using dinov2::test::source_path;

std::string sample(const std::string& file) { return source_path("examples/data/" + file); }

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// A file that exists but is not an image.
std::string text_file() {
  const std::string path = data_path("pipeline_not_an_image.jpg");
  std::ofstream(path) << "this is not an image\n";
  return path;
}

}  // namespace

TEST_CASE("a Pipeline gives per-image features in input order and failures as values",
          "[pipeline]") {
  const auto model = dinov2::Model::load(data_path("model_s4reg.pt"));
  // patch_aligned: images of other aspect ratios get other input sizes, so a window holds
  // several shape groups, and batch_size 2 slices them.
  const Recipe recipe = Recipe::patch_aligned(126, 4096);
  const Pipeline pipeline(model, recipe,
                          PipelineOptions{}.with_batch_size(2).with_decode_threads(2));
  REQUIRE(pipeline.options().window == 8);
  std::vector<ImageSource> inputs =
      ImageSource::files({sample("astronaut.jpg"), sample("chelsea.png"),
                          data_path("pipeline_missing.png"), text_file()});
  inputs.push_back(ImageSource::bytes(read_bytes(sample("coffee.jpg")), "coffee bytes"));
  inputs.push_back(dinov2::image_source(dinov2::load_image(sample("rocket.jpg")), "rocket mat"));
  inputs.push_back(ImageSource::file(sample("camera.png")));
  const std::vector<std::string> originals = {"astronaut.jpg", "chelsea.png", "",          "",
                                              "coffee.jpg",    "rocket.jpg",  "camera.png"};

  const std::vector<ImageFeatures> results = pipeline.run(inputs);
  REQUIRE(results.size() == inputs.size());
  const dinov2::Preprocessor alone = dinov2::Preprocessor::for_model(model, recipe);
  for (std::size_t i = 0; i < results.size(); ++i) {
    const ImageFeatures& r = results[i];
    INFO("input " << i << " " << r.name << ": " << r.error);
    CHECK(r.index == i);
    CHECK(r.name == inputs[i].name());
    if (originals[i].empty()) {
      CHECK_FALSE(r.ok());
      CHECK_FALSE(r.cls.defined());
      continue;
    }
    REQUIRE(r.ok());
    // The reference: the same image preprocessed and run on its own.
    const dinov2::Batch batch = alone(dinov2::image_view(dinov2::load_image(sample(originals[i]))));
    const dinov2::Features f = model.extract_features(batch);
    const dinov2::PatchGrid& g = f.grids.at(0);
    CHECK(r.grid.rows == g.rows);
    CHECK(r.grid.cols == g.cols);
    CHECK(r.grid.original_height == g.original_height);
    CHECK(r.grid.original_width == g.original_width);
    CHECK(r.grid.crop_width == g.crop_width);
    REQUIRE(r.cls.sizes() == f.cls[0].sizes());
    REQUIRE(r.registers.sizes() == f.registers[0].sizes());
    REQUIRE(r.patches.sizes() == f.patches[0].sizes());
    // Batched against alone: only the summation order of the matrix products may differ.
    CHECK(max_abs_diff(r.cls, f.cls[0]) < 1e-5);
    CHECK(max_abs_diff(r.registers, f.registers[0]) < 1e-5);
    CHECK(max_abs_diff(r.patches, f.patches[0]) < 1e-5);
  }
  CHECK_THAT(results[2].error, ContainsSubstring("no such file"));
  CHECK_THAT(results[3].error, ContainsSubstring("not an image"));
  CHECK(results[0].grid.rows != results[1].grid.rows);  // two shapes at least, as intended
}

TEST_CASE("a Pipeline with a LayerRequest gives each image the block outputs a head reads",
          "[pipeline]") {
  const auto model = dinov2::Model::load(data_path("model_s4reg.pt"));
  const Recipe recipe = Recipe::patch_aligned(126, 4096);
  const dinov2::LayerRequest request{{1, -1}, false};
  const Pipeline pipeline(model, recipe, PipelineOptions{}.with_batch_size(2).with_layers(request));
  const std::vector<std::string> names = {"astronaut.jpg", "chelsea.png", "coffee.jpg"};
  std::vector<std::string> paths;
  for (const auto& n : names) paths.push_back(sample(n));
  paths.insert(paths.begin() + 1, data_path("pipeline_missing.png"));
  const std::vector<ImageFeatures> results = pipeline.run(ImageSource::files(paths));
  REQUIRE(results.size() == 4);
  CHECK_FALSE(results[1].ok());
  CHECK(results[1].layers.size() == 0);
  const dinov2::Preprocessor alone = dinov2::Preprocessor::for_model(model, recipe);
  for (const std::size_t i : {0, 2, 3}) {
    const ImageFeatures& r = results[i];
    INFO("input " << i << " " << r.name << ": " << r.error);
    REQUIRE(r.ok());
    CHECK_FALSE(r.cls.defined());
    CHECK_FALSE(r.patches.defined());
    const dinov2::Batch batch = alone(dinov2::image_view(dinov2::load_image(paths[i])));
    const dinov2::LayerFeatures ref = model.intermediate_layers(batch, request);
    REQUIRE(r.layers.size() == 2);
    CHECK(r.layers.indices == ref.indices);
    CHECK(r.layers.indices == std::vector<int64_t>{1, model.info().depth - 1});
    REQUIRE(r.layers.grids.size() == 1);
    CHECK(r.layers.grids[0].rows == r.grid.rows);
    for (std::size_t e = 0; e < 2; ++e) {
      REQUIRE(r.layers.patches[e].sizes() == ref.patches[e].sizes());  // [1, h, w, D]
      REQUIRE(r.layers.cls[e].sizes() == ref.cls[e].sizes());          // [1, D]
      CHECK(max_abs_diff(r.layers.patches[e], ref.patches[e]) < 1e-5);
      CHECK(max_abs_diff(r.layers.cls[e], ref.cls[e]) < 1e-5);
    }
  }
}

TEST_CASE("a Pipeline holds at most two windows of images and reports progress in order",
          "[pipeline][threads]") {
  const auto model = dinov2::Model::load(data_path("model_s4.pt"));
  const std::string jpeg = read_bytes(sample("coffee.jpg"));
  std::vector<ImageSource> inputs;
  for (int i = 0; i < 40; ++i) {
    inputs.push_back(i % 7 == 3 ? ImageSource::bytes("garbage", "bad " + std::to_string(i))
                                : ImageSource::bytes(jpeg, std::to_string(i)));
  }
  for (int threads : {0, 1, 3}) {
    INFO("decode_threads " << threads);
    const Pipeline pipeline(
        model, Recipe::square(56),
        PipelineOptions{}.with_batch_size(2).with_window(4).with_decode_threads(threads));
    std::vector<std::size_t> order;
    std::vector<std::size_t> progress;
    dinov2::RunControl control;
    control.on_progress = [&](const dinov2::PipelineProgress& p) {
      CHECK(p.total == inputs.size());
      progress.push_back(p.done);
    };
    const dinov2::PipelineSummary summary = pipeline.run(
        inputs,
        [&](ImageFeatures&& r) {
          order.push_back(r.index);
          CHECK(r.ok() == (r.index % 7 != 3));
        },
        control);
    CHECK(summary.done == 40);
    CHECK(summary.failed == 6);  // 3, 10, 17, 24, 31, 38
    CHECK_FALSE(summary.cancelled);
    CHECK(summary.peak_buffered >= 4);
    CHECK(summary.peak_buffered <= 8);
    REQUIRE(order.size() == 40);
    for (std::size_t i = 0; i < order.size(); ++i) CHECK(order[i] == i);
    CHECK(progress == std::vector<std::size_t>{4, 8, 12, 16, 20, 24, 28, 32, 36, 40});
  }
}

TEST_CASE(
    "a cancelled Pipeline run stops after the window in flight; a throwing callback "
    "stops it too",
    "[pipeline][errors]") {
  const auto model = dinov2::Model::load(data_path("model_s4.pt"));
  const std::vector<ImageSource> inputs(
      24, ImageSource::bytes(read_bytes(sample("coffee.jpg")), "coffee"));
  const Pipeline pipeline(model, Recipe::square(56),
                          PipelineOptions{}.with_batch_size(2).with_window(4));
  std::atomic<bool> cancel{false};
  dinov2::RunControl control;
  control.cancel = &cancel;
  std::size_t delivered = 0;
  const auto summary = pipeline.run(
      inputs,
      [&](ImageFeatures&&) {
        ++delivered;
        cancel = true;
      },
      control);
  CHECK(summary.cancelled);
  CHECK(delivered == 4);  // the first window was delivered whole
  CHECK(summary.done == 4);

  std::size_t calls = 0;
  CHECK_THROWS_WITH(pipeline.run(inputs,
                                 [&](ImageFeatures&&) {
                                   if (++calls == 6) throw std::runtime_error("sink is full");
                                 }),
                    "sink is full");
  CHECK(calls == 6);
  CHECK(pipeline.run(inputs).size() == 24);  // the pipeline is still usable
}

TEST_CASE("Pipeline options and recipes are checked before any image is read",
          "[pipeline][errors]") {
  const auto model = dinov2::Model::load(data_path("model_s4.pt"));
  const auto code_of = [&](const Recipe& recipe, const PipelineOptions& options) {
    try {
      Pipeline pipeline(model, recipe, options);
    } catch (const dinov2::InputError& e) {
      return e.code();
    }
    return dinov2::ErrorCode::kRuntime;
  };
  const auto invalid = dinov2::ErrorCode::kInvalidArgument;
  CHECK(code_of(Recipe::square(), PipelineOptions{}.with_batch_size(0)) == invalid);
  CHECK(code_of(Recipe::square(), PipelineOptions{}.with_window(-1)) == invalid);
  CHECK(code_of(Recipe::square(), PipelineOptions{}.with_decode_threads(-1)) == invalid);
  CHECK(code_of(Recipe::square(), PipelineOptions{}.with_limits({0, 1})) == invalid);
  CHECK_THAT(dinov2::test::message_of<dinov2::InputError>(
                 [&] { Pipeline pipeline(model, Recipe::resize(14000, 14000)); }),
             ContainsSubstring("1000000 patch tokens, over the model's limit of 16384"));
  // Windows default to the batch for fixed-size recipes, four batches for patch_aligned.
  CHECK(Pipeline(model, Recipe::square(), PipelineOptions{}.with_batch_size(3)).options().window ==
        3);
  CHECK(Pipeline(model, Recipe::patch_aligned(), PipelineOptions{}.with_batch_size(3))
            .options()
            .window == 12);
}

TEST_CASE("Preprocessor::for_model takes the normalisation from the model file", "[pipeline]") {
  const auto model = dinov2::Model::load(data_path("model_s4.pt"));
  const auto pre = dinov2::Preprocessor::for_model(model, Recipe::eval_center_crop());
  CHECK(pre.recipe() == Recipe::eval_center_crop());
  for (int c = 0; c < 3; ++c) {
    CHECK(pre.normalization().mean[c] == model.info().mean[c]);
    CHECK(pre.normalization().stddev[c] == model.info().std[c]);
  }
}
