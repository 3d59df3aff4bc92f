// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Probes on frozen features: a linear classifier trained here (multinomial logistic
/// regression), the weighted kNN classifier of the DINO papers (k = 20, T = 0.07), a stratified
/// train/validation split, and the scores used to judge them (top-1, confusion matrix, IoU).
///
/// Features are rows [N, F] of any floating dtype and device (e.g. Features::cls, or
/// Features::pooled() for the input of the official linear heads); labels are int64 class indices
/// in [0, C). Every failure throws a dinov2::Error: InputError for tensors of the wrong shape,
/// dtype or values, InputError(kInvalidArgument) for bad settings, ModelFileError for a probe file
/// that cannot be read, RuntimeError(kRuntime) when LibTorch fails.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace dinov2 {

/// @brief How LinearProbe::train fits the classifier.
///
/// The objective is the mean cross-entropy of softmax(x W^T + b) plus weight_decay / 2 times the
/// squared Frobenius norm of W (not b), where x are the features standardised with the training
/// mean and standard deviation (per feature; these are folded into W and b afterwards, so the
/// trained probe applies to raw features). It is strictly convex, so the solution does not depend
/// on a starting point: the weights start at zero and full-batch L-BFGS with a strong-Wolfe line
/// search (torch::optim::LBFGS) minimises it, with no randomness at all. Memory is about
/// N x (F + 2 C) floats; for millions of rows, train on a sample.
struct LinearProbeOptions {
  /// @brief L2 penalty on the weights (in standardised units), >= 0. Default 1e-4: a light
  /// penalty that keeps the weights finite on separable data.
  double weight_decay = 1e-4;
  /// @brief Most L-BFGS iterations, >= 1. Default 300.
  int64_t max_iterations = 300;
  /// @brief Stop when the largest absolute gradient entry is below this. Default 1e-5.
  double gradient_tolerance = 1e-5;
  /// @brief Standardise the features before fitting (recommended: it makes the problem well
  /// conditioned). Default true.
  bool standardize = true;
};

/// @brief A linear classifier on feature rows: logits = features W^T + b.
///
/// A copyable value; const methods may be called concurrently.
class LinearProbe {
 public:
  /// @brief Fits a probe (see LinearProbeOptions).
  /// @param features [N, F] floating, any device (training runs there, in float32).
  /// @param labels [N] integer class indices in [0, num_classes).
  /// @param num_classes C >= 2.
  static LinearProbe train(const at::Tensor& features, const at::Tensor& labels,
                           int64_t num_classes, const LinearProbeOptions& options = {});

  /// @brief Reads a probe written by save().
  static LinearProbe load(const std::string& path);
  /// @brief Writes the probe as a safetensors file (atomically): tensors `weight` [C, F] and
  /// `bias` [C] (float32), metadata `format` = "dinov2-linear-probe", `format_version`,
  /// `num_classes`, `class_names` (a JSON list) and every entry of metadata(). The file loads in
  /// Python with `safetensors.torch.load_file`.
  void save(const std::string& path) const;

  /// @brief [C, F] float32 CPU.
  const at::Tensor& weight() const { return weight_; }
  /// @brief [C] float32 CPU.
  const at::Tensor& bias() const { return bias_; }
  /// @brief C.
  int64_t num_classes() const { return weight_.defined() ? weight_.size(0) : 0; }
  /// @brief F: the feature width.
  int64_t dim() const { return weight_.defined() ? weight_.size(1) : 0; }

  /// @brief Class names in label order (empty or C entries).
  const std::vector<std::string>& class_names() const { return class_names_; }
  /// @brief Sets the class names; throws InputError(kInvalidArgument) unless there are C of them.
  void set_class_names(std::vector<std::string> names);
  /// @brief Free-form string metadata saved with the probe (e.g. the backbone and the feature
  /// kind it was trained on). Keys may not be the ones save() writes itself.
  std::map<std::string, std::string>& metadata() { return metadata_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// @brief Final value of the training objective (NaN for a loaded probe).
  double training_loss() const { return loss_; }
  /// @brief Evaluations of the objective during training (0 for a loaded probe).
  int64_t training_evaluations() const { return evaluations_; }

  /// @param features [N, F] floating, any device.
  /// @return [N, C] float32 logits on the features' device.
  at::Tensor logits(const at::Tensor& features) const;
  /// @return [N] int64 arg-max labels on the features' device.
  at::Tensor predict(const at::Tensor& features) const;

 private:
  LinearProbe() = default;
  at::Tensor weight_;
  at::Tensor bias_;
  std::vector<std::string> class_names_;
  std::map<std::string, std::string> metadata_;
  double loss_ = std::numeric_limits<double>::quiet_NaN();
  int64_t evaluations_ = 0;
};

/// @brief The weighted k-nearest-neighbour classifier used to evaluate DINO and DINOv2 features.
///
/// For a query q and training rows x_i with labels y_i, all L2-normalised: take the k rows with
/// the largest cosine similarity s_i = q . x_i, weight each by exp(s_i / T), and score class c by
/// the sum of the weights of the neighbours labelled c. The prediction is the best score.
class KnnClassifier {
 public:
  /// @param features [N, F] floating (the memory bank), any device; kept normalised on it.
  /// @param labels [N] integer class indices in [0, num_classes).
  /// @param k neighbours, >= 1 (min(k, N) are used). Default 20.
  /// @param temperature T > 0. Default 0.07.
  KnnClassifier(const at::Tensor& features, const at::Tensor& labels, int64_t num_classes,
                int64_t k = 20, double temperature = 0.07);

  /// @brief Class scores (summed weights) of each query.
  /// @param queries [Q, F] floating, any device.
  /// @return [Q, C] float32 CPU.
  at::Tensor scores(const at::Tensor& queries) const;
  /// @return [Q] int64 CPU: arg-max of scores().
  at::Tensor predict(const at::Tensor& queries) const;

  int64_t k() const { return k_; }
  double temperature() const { return temperature_; }
  int64_t num_classes() const { return num_classes_; }

 private:
  at::Tensor bank_;    // [N, F] float32, normalised
  at::Tensor labels_;  // [N] int64
  int64_t num_classes_;
  int64_t k_;
  double temperature_;
};

/// @brief Row indices of a train/validation split.
struct Split {
  std::vector<int64_t> train;  ///< ascending
  std::vector<int64_t> val;    ///< ascending
};

/// @brief A stratified random split: within each class, round(val_fraction * n) of its n rows go
/// to validation (at least one and at most n - 1 when n >= 2 and val_fraction > 0; none when
/// n = 1), chosen by a Fisher-Yates shuffle driven by std::mt19937_64(seed), so the split is the
/// same on every platform for the same labels and seed.
/// @param labels class index of each row (any non-negative integers).
/// @param val_fraction in [0, 1).
Split stratified_split(const std::vector<int64_t>& labels, double val_fraction, uint64_t seed);

/// @brief Counts of (true class, predicted class) pairs.
/// @param predicted, target integer tensors of one shape, any device; positions whose target is
/// outside [0, num_classes) (e.g. an ignore label 255) are skipped; a predicted label outside
/// that range throws InputError.
/// @return [C, C] int64 CPU: entry (t, p) counts targets t predicted as p.
at::Tensor confusion_matrix(const at::Tensor& predicted, const at::Tensor& target,
                            int64_t num_classes);

/// @brief Accuracy figures of a classifier.
struct Evaluation {
  int64_t count = 0;     ///< rows scored
  int64_t correct = 0;   ///< rows whose prediction equals the target
  double top1 = 0.0;     ///< correct / count (0 when count is 0)
  at::Tensor confusion;  ///< [C, C] int64 CPU, as confusion_matrix()
};

/// @brief Top-1 accuracy and confusion matrix of predictions against targets.
Evaluation evaluate(const at::Tensor& predicted, const at::Tensor& target, int64_t num_classes);

/// @brief Intersection over union of each class from a confusion matrix: TP / (TP + FP + FN);
/// NaN for a class absent from both targets and predictions.
std::vector<double> iou_per_class(const at::Tensor& confusion);

/// @brief Mean of iou_per_class() over the classes where it is not NaN (NaN if there are none).
double mean_iou(const at::Tensor& confusion);

}  // namespace dinov2
