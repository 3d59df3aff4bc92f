// SPDX-License-Identifier: Apache-2.0
// Classifier: an official linear head or a trained probe behind one interface.
#include "dinov2/classifier.hpp"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

#include <utility>

#include "detail/archive_check.hpp"
#include "dinov2/error.hpp"
#include "dinov2/model.hpp"

namespace dinov2 {

namespace {

const std::string* metadata_value(const LinearProbe& probe, const std::string& key) {
  const auto it = probe.metadata().find(key);
  return it == probe.metadata().end() ? nullptr : &it->second;
}

}  // namespace

Classifier::Classifier(LinearClassifier head)
    : kind_(Kind::kLinearHead),
      head_(std::make_shared<const LinearClassifier>(std::move(head))),
      layers_(head_->layers()),
      recipe_(Recipe::eval_center_crop()) {}

Classifier::Classifier(LinearProbe probe)
    : kind_(Kind::kProbe),
      probe_(std::make_shared<const LinearProbe>(std::move(probe))),
      layers_{{-1}, true},
      recipe_(Recipe::eval_center_crop()) {
  const std::string* features = metadata_value(*probe_, "features");
  probe_reads_cls_ = features != nullptr && *features == "cls";
  if (const std::string* recipe = metadata_value(*probe_, "recipe")) {
    recipe_ = Recipe::parse(*recipe);
  }
}

Classifier Classifier::load(const std::string& path, const Model& model) {
  // Head files are TorchScript archives (zip); probes are safetensors files.
  if (detail::has_zip_magic(path)) return Classifier(LinearClassifier::load(path, model));
  Classifier c(LinearProbe::load(path));
  const ModelInfo& info = model.info();
  if (const std::string* variant = metadata_value(*c.probe_, "variant")) {
    if (*variant != info.variant) {
      throw ModelFileError(fmt::format(
          "dinov2: the probe {} was trained on {} features but the model is {}; use that model",
          path, *variant, info.variant));
    }
  }
  const int64_t width = c.probe_reads_cls_ ? info.embed_dim : 2 * info.embed_dim;
  if (c.probe_->dim() != width) {
    throw ModelFileError(
        fmt::format("dinov2: the probe {} reads {}-wide features but the model gives {}-wide ones",
                    path, c.probe_->dim(), width));
  }
  return c;
}

int64_t Classifier::num_classes() const {
  return head_ ? head_->info().num_classes : probe_->num_classes();
}

const std::vector<std::string>& Classifier::class_names() const {
  return head_ ? head_->info().class_names : probe_->class_names();
}

at::Tensor Classifier::logits(const LayerFeatures& features) const {
  if (head_) return head_->logits(features);
  if (features.size() != 1 || features.cls.size() != 1 || features.patches.size() != 1) {
    throw InputError(fmt::format(
        "dinov2: a probe reads the last block's output, but the features hold {} blocks; use "
        "Model::intermediate_layers(pixels, classifier.layers())",
        features.size()));
  }
  const at::Tensor& cls = features.cls[0];
  const at::Tensor& patches = features.patches[0];
  if (!cls.defined() || cls.dim() != 2 || !patches.defined() || patches.dim() != 4) {
    throw InputError(
        "dinov2: a probe needs LayerFeatures with cls [B, D] and patches [B, h, w, D]");
  }
  if (probe_reads_cls_) return probe_->logits(cls);
  at::Tensor pooled;
  {
    c10::InferenceMode guard;
    pooled = at::cat({cls.to(at::kFloat), patches.to(at::kFloat).mean({1, 2})}, 1);
  }
  return probe_->logits(pooled);
}

at::Tensor Classifier::predict(const LayerFeatures& features) const {
  return logits(features).argmax(1);
}

std::vector<std::vector<ClassScore>> Classifier::top_k(const at::Tensor& logits, int64_t k) const {
  if (head_) return head_->top_k(logits, k);
  return dinov2::top_k(logits, k, probe_->class_names());
}

}  // namespace dinov2
