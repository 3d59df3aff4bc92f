// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Classifier: either kind of image classifier behind one interface, an official linear
/// head (LinearClassifier, a file from `dinov2-export-head --kind linear|linear4`) or a probe
/// trained on this library's features (LinearProbe, a file from `dinov2 probe train`).
///
/// @code
/// const auto model = dinov2::Model::load("dinov2_vits14.pt");
/// const auto classifier = dinov2::Classifier::load("head_or_probe", model);
/// const auto pre = dinov2::Preprocessor::for_model(model, classifier.recipe());
/// const auto batch = pre.process(...);
/// const auto logits = classifier.logits(model.intermediate_layers(batch, classifier.layers()));
/// for (const auto& s : classifier.top_k(logits, 5)[0]) std::cout << s.name << "\n";
/// @endcode
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dinov2/features.hpp"
#include "dinov2/heads.hpp"
#include "dinov2/preprocess.hpp"
#include "dinov2/probe.hpp"

namespace dinov2 {

class Model;

/// @brief An image classifier on a backbone's features: an official linear head or a trained
/// probe, told apart by the file. A copyable value; const methods may be called concurrently.
class Classifier {
 public:
  /// @brief What the classifier is made of.
  enum class Kind {
    kLinearHead,  ///< an official ImageNet head (LinearClassifier)
    kProbe,       ///< a probe trained here (LinearProbe)
  };

  /// @brief Loads a head file (a zip archive) or a probe (a safetensors file) for `model`.
  ///
  /// Throws ModelFileError when the file is neither, or was made for other features: a head
  /// trained on another variant, a probe whose `variant` metadata names another model or whose
  /// width differs from the model's features.
  static Classifier load(const std::string& path, const Model& model);
  /// @brief Wraps an official head.
  explicit Classifier(LinearClassifier head);
  /// @brief Wraps a probe. Its metadata key `features` says what it reads: "cls" (the CLS token)
  /// or anything else, the default, for Features::pooled() (CLS and mean patch); `recipe` names
  /// the preprocessing it was trained with.
  explicit Classifier(LinearProbe probe);

  /// @brief The kind of classifier.
  Kind kind() const noexcept { return kind_; }
  /// @brief The block outputs it reads; give them to Model::intermediate_layers.
  const LayerRequest& layers() const noexcept { return layers_; }
  /// @brief C.
  int64_t num_classes() const;
  /// @brief Class names in label order (C entries, or none for a probe saved without them).
  const std::vector<std::string>& class_names() const;
  /// @brief The preprocessing the classifier expects: the probe's recipe when it recorded one,
  /// else the official evaluation transform (Recipe::eval_center_crop()).
  const Recipe& recipe() const noexcept { return recipe_; }
  /// @brief The official head, or nullptr for a probe.
  const LinearClassifier* head() const noexcept { return head_.get(); }
  /// @brief The probe, or nullptr for an official head.
  const LinearProbe* probe() const noexcept { return probe_.get(); }

  /// @brief Class logits from the block outputs of layers().
  /// @return [B, C] float32 on the features' device.
  at::Tensor logits(const LayerFeatures& features) const;
  /// @brief The most probable class of each image.
  /// @return [B] int64 on the features' device.
  at::Tensor predict(const LayerFeatures& features) const;
  /// @brief The k most probable classes of each image, most probable first.
  /// @param logits [B, C] as returned by logits(); k in 1..C.
  std::vector<std::vector<ClassScore>> top_k(const at::Tensor& logits, int64_t k) const;

 private:
  Kind kind_;
  std::shared_ptr<const LinearClassifier> head_;
  std::shared_ptr<const LinearProbe> probe_;
  LayerRequest layers_;
  Recipe recipe_;
  bool probe_reads_cls_ = false;
};

}  // namespace dinov2
