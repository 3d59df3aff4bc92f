// SPDX-License-Identifier: Apache-2.0
// `dinov2 classify`: the most probable classes of images under a linear classifier head, either
// an official ImageNet head exported with `dinov2-export-head --kind linear|linear4` or a probe
// trained with `dinov2 probe train`.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <memory>
#include <optional>

#include "analysis.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "dinov2/error.hpp"
#include "dinov2/heads.hpp"
#include "dinov2/probe.hpp"

namespace dinov2::cli {

namespace {

struct ClassifyArgs {
  ModelArgs model;
  std::string head;
  int k = 5;
  std::string recipe;
  std::vector<std::string> inputs;
};

/// Head files are TorchScript archives (zip); probes are safetensors.
bool is_zip(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[2] = {0, 0};
  in.read(magic, 2);
  return in && magic[0] == 'P' && magic[1] == 'K';
}

int run_classify(const ClassifyArgs& args) {
  const auto paths = require_images(args.inputs);
  const Model model = args.model.load();
  std::optional<LinearClassifier> official;
  std::optional<LinearProbe> probe;
  std::string default_recipe = "eval224";
  if (is_zip(args.head)) {
    official = LinearClassifier::load(args.head, model);
  } else {
    probe = LinearProbe::load(args.head);
    const auto& meta = probe->metadata();
    const auto variant = meta.find("variant");
    if (variant != meta.end() && variant->second != model.info().variant) {
      throw ModelFileError(fmt::format(
          "dinov2: the probe {} was trained on {} features but --model is {}; use that model",
          args.head, variant->second, model.info().variant));
    }
    const auto recipe = meta.find("recipe");
    if (recipe != meta.end()) default_recipe = recipe->second;
  }
  const int64_t classes = official ? official->info().num_classes : probe->num_classes();
  const int64_t k = std::min<int64_t>(args.k, classes);
  const Preprocessor pre =
      model_preprocessor(model, parse_recipe(args.recipe.empty() ? default_recipe : args.recipe));

  return for_each_image(paths, pre, [&](const InputImage& image) {
    const std::string& path = image.path;
    std::vector<ClassScore> top;
    if (official) {
      top = official->top_k(official->logits(model, image.batch.pixels), k)[0];
    } else {
      const Features f = model.extract_features(image.batch);
      const bool cls =
          probe->metadata().count("features") && probe->metadata().at("features") == "cls";
      const at::Tensor x = cls ? f.cls : f.pooled();
      if (x.size(1) != probe->dim()) {
        throw ModelFileError(
            fmt::format("dinov2: the probe {} reads {}-wide features but the "
                        "model gives {}-wide ones",
                        args.head, probe->dim(), x.size(1)));
      }
      const at::Tensor p = probe->logits(x).softmax(1)[0].cpu();
      const auto best = p.topk(k);
      for (int64_t j = 0; j < k; ++j) {
        ClassScore s;
        s.index = std::get<1>(best)[j].item<int64_t>();
        s.probability = std::get<0>(best)[j].item<float>();
        s.name = static_cast<size_t>(s.index) < probe->class_names().size()
                     ? probe->class_names()[static_cast<size_t>(s.index)]
                     : std::to_string(s.index);
        top.push_back(s);
      }
    }
    std::cout << path << "\n";
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
