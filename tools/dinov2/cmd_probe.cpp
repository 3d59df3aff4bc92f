// SPDX-License-Identifier: Apache-2.0
// `dinov2 probe train|eval`: a linear classifier (and the weighted kNN classifier) on the
// features of an ImageFolder dataset.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <iostream>
#include <map>
#include <memory>

#include "analysis.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "dinov2/error.hpp"
#include "dinov2/probe.hpp"

namespace dinov2::cli {

namespace {

using json = nlohmann::json;

struct ProbeArgs {
  ModelArgs model;
  std::string data;
  std::string output;
  std::string head;
  std::string recipe;
  std::string features = "pooled";
  double val_split = 0.2;
  uint64_t seed = 0;
  bool knn = false;
  int knn_k = 20;
  double temperature = 0.07;
  double weight_decay = 1e-4;
  int max_iterations = 300;
  int batch = 8;
};

at::Tensor select_rows(const at::Tensor& t, const std::vector<int64_t>& rows) {
  return t.index_select(0, at::tensor(rows, at::kLong));
}

/// Embeds a dataset; returns the features of the readable images and their labels.
std::pair<at::Tensor, at::Tensor> dataset_features(const Model& model, const Preprocessor& pre,
                                                   const ImageFolder& data, const std::string& kind,
                                                   int batch, size_t& failed) {
  const Embeddings e = embed_images(model, pre, data.paths, batch);
  failed = e.failed.size();
  std::vector<int64_t> labels;
  for (int64_t row : e.rows) labels.push_back(data.labels[static_cast<size_t>(row)]);
  return {kind == "cls" ? e.cls : e.pooled, at::tensor(labels, at::kLong)};
}

void print_evaluation(const std::string& what, const Evaluation& e,
                      const std::vector<std::string>& names) {
  std::cout << fmt::format("{}: top-1 {:.2f} % ({} of {})\n", what, 100.0 * e.top1, e.correct,
                           e.count);
  std::cout << format_confusion(e.confusion, names);
}

int run_train(const ProbeArgs& args) {
  const ImageFolder data = scan_image_folder(args.data);
  const Model model = args.model.load();
  const std::string recipe_text = args.recipe.empty() ? "eval224" : args.recipe;
  const Recipe recipe = parse_recipe(recipe_text);
  const Preprocessor pre = model_preprocessor(model, recipe);
  const auto num_classes = static_cast<int64_t>(data.classes.size());
  std::cout << fmt::format("dataset {}: {} images in {} classes\n", args.data, data.paths.size(),
                           num_classes);

  size_t failed = 0;
  const auto [x, y] = dataset_features(model, pre, data, args.features, args.batch, failed);
  const std::vector<int64_t> labels(y.data_ptr<int64_t>(), y.data_ptr<int64_t>() + y.numel());
  const Split split = stratified_split(labels, args.val_split, args.seed);
  if (split.train.empty()) throw InputError("dinov2: no training images could be read");
  const at::Tensor x_train = select_rows(x, split.train), y_train = select_rows(y, split.train);

  LinearProbeOptions options;
  options.weight_decay = args.weight_decay;
  options.max_iterations = args.max_iterations;
  LinearProbe probe = LinearProbe::train(x_train, y_train, num_classes, options);
  probe.set_class_names(data.classes);
  const auto& info = model.info();
  probe.metadata()["variant"] = info.variant;
  probe.metadata()["embed_dim"] = std::to_string(info.embed_dim);
  probe.metadata()["weights_sha256"] = info.weights_sha256;
  probe.metadata()["features"] = args.features;
  probe.metadata()["recipe"] = recipe.to_string();
  probe.metadata()["train_images"] = std::to_string(split.train.size());
  probe.metadata()["val_images"] = std::to_string(split.val.size());
  probe.metadata()["seed"] = std::to_string(args.seed);
  probe.metadata()["weight_decay"] = fmt::format("{}", args.weight_decay);

  std::cout << fmt::format(
      "linear probe on {} features ({} wide): {} training and {} validation images; loss {:.4g} "
      "after {} evaluations\n",
      args.features, x.size(1), split.train.size(), split.val.size(), probe.training_loss(),
      probe.training_evaluations());
  const Evaluation train_eval = evaluate(probe.predict(x_train), y_train, num_classes);
  std::cout << fmt::format("training: top-1 {:.2f} %\n", 100.0 * train_eval.top1);
  if (!split.val.empty()) {
    const at::Tensor x_val = select_rows(x, split.val), y_val = select_rows(y, split.val);
    const Evaluation val = evaluate(probe.predict(x_val), y_val, num_classes);
    print_evaluation("validation", val, data.classes);
    probe.metadata()["val_top1"] = fmt::format("{:.6f}", val.top1);
    if (args.knn) {
      // The official kNN protocol uses the CLS token whatever the linear probe read.
      const int64_t d = info.embed_dim;
      const at::Tensor cls = args.features == "cls" ? x : x.slice(1, 0, d);
      const KnnClassifier knn(select_rows(cls, split.train), y_train, num_classes, args.knn_k,
                              args.temperature);
      const Evaluation k = evaluate(knn.predict(select_rows(cls, split.val)), y_val, num_classes);
      print_evaluation(fmt::format("kNN (k = {}, T = {}) validation", args.knn_k, args.temperature),
                       k, data.classes);
      probe.metadata()["knn_val_top1"] = fmt::format("{:.6f}", k.top1);
    }
  } else if (args.knn) {
    std::cerr << "dinov2: --knn needs a validation split (--val-split > 0); skipped\n";
  }
  probe.save(args.output);
  std::cout << fmt::format("saved the probe to {}\n", args.output);
  if (failed > 0) {
    std::cerr << fmt::format("dinov2: {} image(s) could not be read and were left out\n", failed);
    return kExitInputsFailed;
  }
  return kExitSuccess;
}

int run_eval(const ProbeArgs& args) {
  const LinearProbe probe = LinearProbe::load(args.head);
  const ImageFolder data = scan_image_folder(args.data, 1);
  const Model model = args.model.load();
  const auto& meta = probe.metadata();
  auto get = [&](const char* key, const std::string& fallback) {
    const auto it = meta.find(key);
    return it == meta.end() ? fallback : it->second;
  };
  const std::string variant = get("variant", "");
  if (!variant.empty() && variant != model.info().variant) {
    throw ModelFileError(fmt::format(
        "dinov2: the probe {} was trained on {} features but --model is {}; use that model",
        args.head, variant, model.info().variant));
  }
  const std::string kind = get("features", "pooled");
  const Recipe recipe = parse_recipe(args.recipe.empty() ? get("recipe", "eval224") : args.recipe);
  const Preprocessor pre = model_preprocessor(model, recipe);

  // Folder names are matched to the probe's class names.
  std::vector<std::string> names = probe.class_names();
  if (names.empty()) {
    for (int64_t c = 0; c < probe.num_classes(); ++c) names.push_back(std::to_string(c));
  }
  std::map<std::string, int64_t> index;
  for (size_t c = 0; c < names.size(); ++c) index[names[c]] = static_cast<int64_t>(c);
  ImageFolder mapped = data;
  for (size_t i = 0; i < data.paths.size(); ++i) {
    const std::string& cls = data.classes[static_cast<size_t>(data.labels[i])];
    const auto it = index.find(cls);
    if (it == index.end()) {
      throw InputError(fmt::format(
          "dinov2: the class folder '{}' of {} is not one of the probe's classes ({}); rename "
          "it or remove it",
          cls, args.data, fmt::join(names, ", ")));
    }
    mapped.labels[i] = it->second;
  }
  size_t failed = 0;
  const auto [x, y] = dataset_features(model, pre, mapped, kind, args.batch, failed);
  if (x.size(1) != probe.dim()) {
    throw ModelFileError(
        fmt::format("dinov2: the probe {} reads {}-wide features but --model "
                    "gives {}-wide {} features",
                    args.head, probe.dim(), x.size(1), kind));
  }
  const Evaluation e = evaluate(probe.predict(x), y, probe.num_classes());
  print_evaluation(fmt::format("{}", args.data), e, names);
  if (failed > 0) {
    std::cerr << fmt::format("dinov2: {} image(s) could not be read and were left out\n", failed);
    return kExitInputsFailed;
  }
  return kExitSuccess;
}

}  // namespace

Command register_probe(CLI::App& app) {
  auto args = std::make_shared<ProbeArgs>();
  CLI::App* sub = app.add_subcommand(
      "probe", "Train or evaluate a linear classifier on the features of an image dataset");
  sub->require_subcommand(1);
  sub->footer(
      "DIR is an ImageFolder dataset: one subfolder per class (sorted by name), holding its "
      "images (searched recursively). Exit code 3 when some images could not be read.");

  CLI::App* train = sub->add_subcommand(
      "train", "Fit a linear probe (multinomial logistic regression, L-BFGS) and save it");
  train->footer(
      "The split is stratified: --val-split of each class (at least one image) goes to "
      "validation, drawn with --seed. Training is deterministic (a convex objective from zero "
      "weights). --features pooled reads cat(CLS, mean patch) as the official linear heads do; "
      "cls reads the CLS token. --knn also reports the weighted kNN classifier (CLS features, "
      "cosine, weights exp(sim / T)) on the same split. The probe is saved as safetensors "
      "(weight, bias, class names and training details in the metadata).");
  args->model.add_to(train);
  train->add_option("--data,-d", args->data, "ImageFolder dataset")->required()->type_name("DIR");
  train->add_option("--output,-o", args->output, "Probe file to write (.safetensors)")
      ->required()
      ->type_name("HEAD");
  train->add_option("--val-split", args->val_split, "Fraction of each class held out")
      ->check(CLI::Range(0.0, 0.95))
      ->capture_default_str();
  train->add_option("--seed", args->seed, "Seed of the split")->capture_default_str();
  train->add_option("--features", args->features, "Features the probe reads")
      ->check(CLI::IsMember({"pooled", "cls"}))
      ->capture_default_str();
  train->add_flag("--knn", args->knn, "Also evaluate the kNN classifier");
  train->add_option("--knn-k", args->knn_k, "Neighbours of the kNN classifier")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  train->add_option("--temperature", args->temperature, "Temperature of the kNN weights")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  train->add_option("--weight-decay", args->weight_decay, "L2 penalty on the weights")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  train->add_option("--max-iter", args->max_iterations, "Most L-BFGS iterations")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  train->add_option("--recipe", args->recipe, std::string(recipe_help()) + ". Default: eval224");
  train->add_option("--batch", args->batch, "Images per forward pass")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();

  CLI::App* eval = sub->add_subcommand(
      "eval", "Top-1 and confusion matrix of a saved probe on an ImageFolder dataset");
  eval->footer(
      "Class folders are matched to the probe's class names; the recipe and feature kind "
      "recorded in the probe are used unless --recipe is given.");
  args->model.add_to(eval);
  add_head_file(eval, args->head, "Probe written by `dinov2 probe train`", "HEAD");
  eval->add_option("--data,-d", args->data, "ImageFolder dataset")->required()->type_name("DIR");
  eval->add_option("--recipe", args->recipe,
                   std::string(recipe_help()) + ". Default: the probe's recipe");
  eval->add_option("--batch", args->batch, "Images per forward pass")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();

  return {sub, [args, train, eval] {
            if (train->parsed()) return run_train(*args);
            if (eval->parsed()) return run_eval(*args);
            std::cerr << "dinov2: probe needs a subcommand: train or eval\n";
            return static_cast<int>(kExitUsage);
          }};
}

}  // namespace dinov2::cli
