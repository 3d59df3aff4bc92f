// SPDX-License-Identifier: Apache-2.0
// `dinov2 classify`: the most probable classes of images under a linear classifier head, either
// an official ImageNet head exported with `dinov2-export-head --kind linear|linear4` or a probe
// trained with `dinov2 probe train`.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <iostream>
#include <memory>

#include "analysis.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "dinov2/classifier.hpp"
#include "dinov2/error.hpp"
#include "dinov2/pipeline.hpp"

namespace dinov2::cli {

namespace {

struct ClassifyArgs {
  ModelArgs model;
  std::string head;
  int k = 5;
  std::string recipe;
  std::vector<std::string> inputs;
};

int run_classify(const ClassifyArgs& args) {
  const auto paths = require_images(args.inputs);
  const Model model = args.model.load();
  const Classifier classifier = Classifier::load(args.head, model);
  const int64_t k = std::min<int64_t>(args.k, classifier.num_classes());
  const Recipe recipe = args.recipe.empty() ? classifier.recipe() : parse_recipe(args.recipe);
  const Pipeline pipeline(model, recipe, per_image_options().with_layers(classifier.layers()));
  return for_each_image(pipeline, paths, [&](const ImageFeatures& image) {
    const auto top = classifier.top_k(classifier.logits(image.layers), k)[0];
    std::cout << image.name << "\n";
    for (size_t j = 0; j < top.size(); ++j) {
      std::cout << fmt::format("  {}  {:.4f}  {} ({})\n", j + 1, top[j].probability, top[j].name,
                               top[j].index);
    }
  });
}

}  // namespace

Command register_classify(CLI::App& app) {
  auto args = std::make_shared<ClassifyArgs>();
  CLI::App* sub =
      app.add_subcommand("classify", "Top-k classes of images under a linear classifier head");
  sub->footer(
      "HEAD is an official ImageNet classifier exported with `dinov2-export-head --kind linear` "
      "or `--kind linear4` for the same backbone, or a probe trained by `dinov2 probe train`. "
      "Prints, per image, the k most probable classes with their softmax probability, name and "
      "index. The default recipe is eval224 (the official evaluation transform), or the probe's "
      "recipe. Exit code 3 when some images could not be read.");
  args->model.add_to(sub);
  add_head_file(sub, args->head, "Classifier head or probe file");
  sub->add_option("--k,-k", args->k, "Classes shown per image")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--recipe", args->recipe, std::string(recipe_help()) + ". Default: eval224");
  add_image_inputs(sub, args->inputs);
  return {sub, [args] { return run_classify(*args); }};
}

}  // namespace dinov2::cli
