// SPDX-License-Identifier: Apache-2.0
// Linear probe (L-BFGS on the softmax cross-entropy), weighted kNN, splits and scores.
#include "dinov2/probe.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/optim/lbfgs.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>
#include <utility>

#include "detail/boundary.hpp"
#include "dinov2/error.hpp"
#include "dinov2/io.hpp"
#include "dinov2/retrieval.hpp"

namespace dinov2 {

namespace {

using detail::guarded;
using detail::shape_of;

using nlohmann::json;

constexpr const char* kProbeFormat = "dinov2-linear-probe";
constexpr int kProbeFormatVersion = 1;

void check_features(const at::Tensor& x, const char* what, int64_t dim = -1) {
  if (!x.defined() || x.dim() != 2 || !at::isFloatingType(x.scalar_type()) ||
      (dim >= 0 && x.size(1) != dim)) {
    throw InputError(std::string("dinov2: ") + what + " must be a floating [N, " +
                     (dim >= 0 ? std::to_string(dim) : std::string("F")) + "] tensor; got " +
                     shape_of(x));
  }
}

/// The labels as an int64 tensor on `device`, checked against the row count and class range.
at::Tensor checked_labels(const at::Tensor& labels, int64_t rows, int64_t num_classes,
                          const char* what) {
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != rows ||
      !at::isIntegralType(labels.scalar_type(), /*includeBool=*/false)) {
    throw InputError(std::string("dinov2: ") + what + ": the labels must be an integer [" +
                     std::to_string(rows) + "] tensor (one per feature row); got " +
                     shape_of(labels));
  }
  const at::Tensor l = labels.to(at::kLong);
  if (rows > 0) {
    const int64_t lo = l.min().item<int64_t>(), hi = l.max().item<int64_t>();
    if (lo < 0 || hi >= num_classes) {
      throw InputError(std::string("dinov2: ") + what + ": labels must be in [0, " +
                       std::to_string(num_classes) + "); found " +
                       std::to_string(lo < 0 ? lo : hi));
    }
  }
  return l;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Linear probe

LinearProbe LinearProbe::train(const at::Tensor& features, const at::Tensor& labels,
                               int64_t num_classes, const LinearProbeOptions& options) {
  check_features(features, "LinearProbe::train: the features");
  if (num_classes < 2) {
    throw InputError::invalid_argument(
        "dinov2: LinearProbe::train: num_classes = " + std::to_string(num_classes) +
        "; a classifier needs at least 2 classes");
  }
  if (features.size(0) < 1) {
    throw InputError("dinov2: LinearProbe::train: no training rows");
  }
  if (!(options.weight_decay >= 0.0) || options.max_iterations < 1 ||
      !(options.gradient_tolerance >= 0.0)) {
    throw InputError::invalid_argument(
        "dinov2: LinearProbeOptions: weight_decay and gradient_tolerance must be >= 0 "
        "and max_iterations >= 1");
  }
  const at::Tensor y0 = checked_labels(labels, features.size(0), num_classes, "LinearProbe::train");
  return guarded("LinearProbe::train", [&] {
    // Autograd must be on, even when the caller runs in inference mode; clone() turns inference
    // tensors into ordinary ones that autograd may save.
    c10::InferenceMode no_inference(false);
    c10::AutoGradMode grad(true);
    at::Tensor x = features.detach().to(at::kFloat).clone();
    const at::Tensor y = y0.to(x.device());
    if (!at::isfinite(x).all().item<bool>()) {
      throw InputError("dinov2: LinearProbe::train: the features contain NaN or infinite values");
    }
    const int64_t f = x.size(1);
    at::Tensor mean = at::zeros({f}, x.options());
    at::Tensor scale = at::ones({f}, x.options());
    if (options.standardize) {
      mean = x.mean(0);
      const at::Tensor sd = x.std(0, /*unbiased=*/false);
      // Constant features keep unit scale: their weights then only feel the weight decay.
      scale = at::where(sd > 1e-6, sd, at::ones_like(sd));
      x = (x - mean) / scale;
    }
    at::Tensor w = at::zeros({num_classes, f}, x.options()).requires_grad_(true);
    at::Tensor b = at::zeros({num_classes}, x.options()).requires_grad_(true);
    torch::optim::LBFGS optimizer(std::vector<at::Tensor>{w, b},
                                  torch::optim::LBFGSOptions(1.0)
                                      .max_iter(options.max_iterations)
                                      .max_eval(options.max_iterations * 5 / 4 + 1)
                                      .tolerance_grad(options.gradient_tolerance)
                                      .tolerance_change(1e-12)
                                      .history_size(20)
                                      .line_search_fn("strong_wolfe"));
    const double decay = options.weight_decay;
    int64_t evaluations = 0;
    auto objective = [&] {
      optimizer.zero_grad();
      const at::Tensor logits = at::addmm(b, x, w.t());
      at::Tensor loss = at::cross_entropy_loss(logits, y) + 0.5 * decay * w.pow(2).sum();
      loss.backward();
      ++evaluations;
      return loss;
    };
    optimizer.step(objective);

    LinearProbe probe;
    {
      at::NoGradGuard no_grad;
      const at::Tensor loss =
          at::cross_entropy_loss(at::addmm(b, x, w.t()), y) + 0.5 * decay * w.pow(2).sum();
      probe.loss_ = loss.item<double>();
      // Fold the standardisation: w (x - m) / s + b = (w / s) x + (b - (w / s) m).
      const at::Tensor w_raw = w.detach() / scale;
      probe.weight_ = w_raw.cpu().contiguous();
      probe.bias_ = (b.detach() - at::matmul(w_raw, mean)).cpu().contiguous();
    }
    probe.evaluations_ = evaluations;
    if (!std::isfinite(probe.loss_)) {
      throw RuntimeError(
          "dinov2: LinearProbe::train diverged (the loss is not finite); check the "
          "features or raise LinearProbeOptions::weight_decay");
    }
    return probe;
  });
}

void LinearProbe::set_class_names(std::vector<std::string> names) {
  if (!names.empty() && static_cast<int64_t>(names.size()) != num_classes()) {
    throw InputError::invalid_argument(
        "dinov2: LinearProbe::set_class_names: " + std::to_string(names.size()) + " names for " +
        std::to_string(num_classes()) + " classes");
  }
  class_names_ = std::move(names);
}

at::Tensor LinearProbe::logits(const at::Tensor& features) const {
  check_features(features, "LinearProbe::logits: the features", dim());
  return guarded("LinearProbe::logits", [&] {
    const at::Tensor x = features.detach().to(at::kFloat);
    return at::addmm(bias_.to(x.device()), x, weight_.to(x.device()).t());
  });
}

at::Tensor LinearProbe::predict(const at::Tensor& features) const {
  const at::Tensor l = logits(features);
  return guarded("LinearProbe::predict", [&] { return l.argmax(1); });
}

void LinearProbe::save(const std::string& path) const {
  TensorMetadata meta;
  for (const auto& [key, value] : metadata_) {
    if (key == "format" || key == "format_version" || key == "num_classes" ||
        key == "class_names") {
      throw InputError::invalid_argument("dinov2: LinearProbe::save: the metadata key '" + key +
                                         "' is reserved; rename it");
    }
    meta[key] = value;
  }
  meta["format"] = kProbeFormat;
  meta["format_version"] = std::to_string(kProbeFormatVersion);
  meta["num_classes"] = std::to_string(num_classes());
  meta["class_names"] = json(class_names_).dump(-1, ' ', false, json::error_handler_t::replace);
  save_safetensors(path, NamedTensors{{"weight", weight_}, {"bias", bias_}}, meta);
}

LinearProbe LinearProbe::load(const std::string& path) {
  SafetensorsFile file;
  try {
    file = load_safetensors(path);
  } catch (const Error& e) {
    throw ModelFileError("dinov2: cannot read the probe file: " + e.message());
  }
  const auto& meta = file.metadata;
  auto format = meta.find("format");
  if (format == meta.end() || format->second != kProbeFormat) {
    throw ModelFileError("dinov2: '" + path +
                         "' is not a linear probe written by dinov2 (its metadata lacks "
                         "format = dinov2-linear-probe); train one with `dinov2 probe train`");
  }
  int version = 0;
  try {
    version = std::stoi(meta.at("format_version"));
  } catch (const std::exception&) {
    throw ModelFileError("dinov2: the probe file '" + path + "' has no valid format_version");
  }
  if (version > kProbeFormatVersion) {
    throw ModelFileError("dinov2: the probe file '" + path + "' has format version " +
                         std::to_string(version) + "; this library reads up to " +
                         std::to_string(kProbeFormatVersion) + "; upgrade dinov2");
  }
  auto w = file.tensors.find("weight");
  auto b = file.tensors.find("bias");
  if (w == file.tensors.end() || b == file.tensors.end() || w->second.dim() != 2 ||
      b->second.dim() != 1 || b->second.size(0) != w->second.size(0) || w->second.size(0) < 2 ||
      !at::isFloatingType(w->second.scalar_type()) ||
      !at::isFloatingType(b->second.scalar_type())) {
    throw ModelFileError("dinov2: the probe file '" + path +
                         "' needs floating tensors weight [C, F] and bias [C] with C >= 2");
  }
  LinearProbe probe;
  probe.weight_ = w->second.to(at::kFloat).contiguous();
  probe.bias_ = b->second.to(at::kFloat).contiguous();
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"weight", probe.weight_},
                                {"bias", probe.bias_}}) {
    const at::Tensor bad = at::logical_not(at::isfinite(t));
    if (bad.any().item<bool>()) {
      const int64_t row = bad.dim() == 2 ? bad.any(1).nonzero()[0][0].item<int64_t>()
                                         : bad.nonzero()[0][0].item<int64_t>();
      throw ModelFileError("dinov2: the probe file '" + path + "' holds NaN or Inf in " + name +
                           " (class row " + std::to_string(row) + "); retrain the probe");
    }
  }
  probe.loss_ = std::numeric_limits<double>::quiet_NaN();
  for (const auto& [key, value] : meta) {
    if (key == "format" || key == "format_version" || key == "num_classes" ||
        key == "class_names") {
      continue;
    }
    probe.metadata_[key] = value;
  }
  auto names = meta.find("class_names");
  if (names != meta.end()) {
    std::vector<std::string> list;
    try {
      list = json::parse(names->second).get<std::vector<std::string>>();
    } catch (const json::exception&) {
      throw ModelFileError("dinov2: the probe file '" + path +
                           "' has class_names that are not a JSON list of strings");
    }
    if (!list.empty() && static_cast<int64_t>(list.size()) != probe.num_classes()) {
      throw ModelFileError("dinov2: the probe file '" + path + "' names " +
                           std::to_string(list.size()) + " classes but has " +
                           std::to_string(probe.num_classes()));
    }
    probe.class_names_ = std::move(list);
  }
  return probe;
}

// ---------------------------------------------------------------------------------------------
// kNN

KnnClassifier::KnnClassifier(const at::Tensor& features, const at::Tensor& labels,
                             int64_t num_classes, int64_t k, double temperature)
    : num_classes_(num_classes), k_(k), temperature_(temperature) {
  check_features(features, "KnnClassifier: the features");
  if (num_classes < 1 || k < 1 || !(temperature > 0.0)) {
    throw InputError::invalid_argument(
        "dinov2: KnnClassifier needs num_classes >= 1, k >= 1 and temperature > 0; got " +
        std::to_string(num_classes) + ", " + std::to_string(k) + ", " +
        std::to_string(temperature));
  }
  if (features.size(0) < 1) throw InputError("dinov2: KnnClassifier: the memory bank is empty");
  labels_ = checked_labels(labels, features.size(0), num_classes, "KnnClassifier").cpu();
  bank_ = guarded("KnnClassifier", [&] { return features.detach().to(at::kFloat); });
}

at::Tensor KnnClassifier::scores(const at::Tensor& queries) const {
  check_features(queries, "KnnClassifier::scores: the queries", bank_.size(1));
  const SearchResult nearest = cosine_top_k(queries.to(bank_.device()), bank_, k_);
  return guarded("KnnClassifier::scores", [&] {
    const at::Tensor weights = (nearest.scores.to(at::kDouble) / temperature_).exp();
    const at::Tensor classes =
        labels_.index_select(0, nearest.indices.reshape({-1})).reshape(nearest.indices.sizes());
    return at::zeros({queries.size(0), num_classes_}, at::kDouble)
        .scatter_add_(1, classes, weights)
        .to(at::kFloat);
  });
}

at::Tensor KnnClassifier::predict(const at::Tensor& queries) const {
  return scores(queries).argmax(1);
}

// ---------------------------------------------------------------------------------------------
// Splits and scores

Split stratified_split(const std::vector<int64_t>& labels, double val_fraction, uint64_t seed) {
  if (!(val_fraction >= 0.0 && val_fraction < 1.0)) {
    throw InputError::invalid_argument("dinov2: the validation fraction " +
                                       std::to_string(val_fraction) + " must be in [0, 1)");
  }
  std::map<int64_t, std::vector<int64_t>> by_class;
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0) {
      throw InputError("dinov2: stratified_split: label " + std::to_string(labels[i]) + " of row " +
                       std::to_string(i) + " is negative");
    }
    by_class[labels[i]].push_back(static_cast<int64_t>(i));
  }
  std::mt19937_64 rng(seed);
  Split split;
  for (auto& [label, rows] : by_class) {
    const auto n = static_cast<int64_t>(rows.size());
    int64_t n_val = static_cast<int64_t>(std::llround(val_fraction * static_cast<double>(n)));
    if (n >= 2 && val_fraction > 0.0) n_val = std::clamp<int64_t>(n_val, 1, n - 1);
    if (n < 2) n_val = 0;
    // Fisher-Yates with an explicit modulo draw: std::shuffle's algorithm is not specified.
    for (int64_t i = n - 1; i > 0; --i) {
      const auto j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
      std::swap(rows[static_cast<size_t>(i)], rows[static_cast<size_t>(j)]);
    }
    split.val.insert(split.val.end(), rows.begin(), rows.begin() + n_val);
    split.train.insert(split.train.end(), rows.begin() + n_val, rows.end());
  }
  std::sort(split.train.begin(), split.train.end());
  std::sort(split.val.begin(), split.val.end());
  return split;
}

at::Tensor confusion_matrix(const at::Tensor& predicted, const at::Tensor& target,
                            int64_t num_classes) {
  if (!predicted.defined() || !target.defined() || predicted.sizes() != target.sizes() ||
      !at::isIntegralType(predicted.scalar_type(), false) ||
      !at::isIntegralType(target.scalar_type(), false)) {
    throw InputError(
        "dinov2: confusion_matrix needs integer predictions and targets of one "
        "shape; got " +
        shape_of(predicted) + " and " + shape_of(target));
  }
  if (num_classes < 1) {
    throw InputError::invalid_argument("dinov2: confusion_matrix: num_classes must be positive");
  }
  return guarded("confusion_matrix", [&] {
    const at::Tensor t = target.reshape({-1}).to(at::kCPU, at::kLong);
    const at::Tensor p = predicted.reshape({-1}).to(at::kCPU, at::kLong);
    const at::Tensor keep = t.ge(0).logical_and(t.lt(num_classes));
    const at::Tensor tk = t.masked_select(keep), pk = p.masked_select(keep);
    if (pk.numel() > 0 &&
        (pk.min().item<int64_t>() < 0 || pk.max().item<int64_t>() >= num_classes)) {
      throw InputError("dinov2: confusion_matrix: a predicted label is outside [0, " +
                       std::to_string(num_classes) + ")");
    }
    return at::bincount(tk * num_classes + pk, {}, num_classes * num_classes)
        .reshape({num_classes, num_classes})
        .to(at::kLong);
  });
}

Evaluation evaluate(const at::Tensor& predicted, const at::Tensor& target, int64_t num_classes) {
  Evaluation e;
  e.confusion = confusion_matrix(predicted, target, num_classes);
  e.count = e.confusion.sum().item<int64_t>();
  e.correct = e.confusion.trace().item<int64_t>();
  e.top1 = e.count > 0 ? static_cast<double>(e.correct) / static_cast<double>(e.count) : 0.0;
  return e;
}

std::vector<double> iou_per_class(const at::Tensor& confusion) {
  if (!confusion.defined() || confusion.dim() != 2 || confusion.size(0) != confusion.size(1)) {
    throw InputError("dinov2: iou_per_class needs a square [C, C] confusion matrix; got " +
                     shape_of(confusion));
  }
  const at::Tensor c = confusion.to(at::kCPU, at::kDouble);
  const at::Tensor tp = c.diagonal();
  const at::Tensor uni = c.sum(0) + c.sum(1) - tp;
  std::vector<double> out;
  for (int64_t i = 0; i < c.size(0); ++i) {
    const double u = uni[i].item<double>();
    out.push_back(u > 0 ? tp[i].item<double>() / u : std::numeric_limits<double>::quiet_NaN());
  }
  return out;
}

double mean_iou(const at::Tensor& confusion) {
  double sum = 0;
  int64_t n = 0;
  for (double v : iou_per_class(confusion)) {
    if (!std::isnan(v)) {
      sum += v;
      ++n;
    }
  }
  return n > 0 ? sum / static_cast<double>(n) : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace dinov2
