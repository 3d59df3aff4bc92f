// SPDX-License-Identifier: Apache-2.0
// Probes against independent NumPy implementations (tests/refgen/analysis_refs.py).
//
// kNN: the reference sums exp(sim / 0.07) over the 20 most similar rows in float64; the library
// works in float32, where similarities differ by ~1e-7, i.e. ~2e-6 relative after exp(s / T):
// scores must agree to 1e-4 relative (measured 1.3e-6). Linear probe: the reference minimises the
// documented objective with Newton's method; L-BFGS in float32 stopped at gradient 1e-6 must
// reach the same minimum to 1e-6 (measured 3e-8) and, the objective being strongly convex with
// curvature >= weight decay = 1e-2, probabilities within 2e-3 (measured 2.1e-4).
#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <set>

#include "dinov2/error.hpp"
#include "dinov2/io.hpp"
#include "dinov2/probe.hpp"
#include "support.hpp"

using dinov2::test::data_path;
using dinov2::test::max_abs_diff;

namespace {

const at::Tensor& reference(const std::string& name) {
  static const auto r = dinov2::test::load_tensors(data_path("analysis_refs.pt"));
  const auto it = r.find(name);
  if (it == r.end()) throw std::runtime_error("no reference tensor " + name);
  return it->second;
}

}  // namespace

TEST_CASE("KnnClassifier scores are the weighted votes of the NumPy reference",
          "[probe][knn][parity]") {
  const dinov2::KnnClassifier knn(reference("knn/bank"), reference("knn/labels"), 5);
  CHECK(knn.k() == 20);
  CHECK(knn.temperature() == 0.07);
  const at::Tensor scores = knn.scores(reference("knn/queries"));
  const at::Tensor expected = reference("knn/scores");
  REQUIRE(scores.sizes() == expected.sizes());
  const double rel =
      ((scores.to(at::kDouble) - expected).abs() / (expected.abs() + 1e-30)).max().item<double>();
  CHECK(rel < 1e-4);
  CHECK(knn.predict(reference("knn/queries")).equal(expected.argmax(1)));
}

TEST_CASE("KnnClassifier uses every row when k exceeds the bank", "[probe][knn]") {
  // Two rows of class 0 and 1; the query equals row 1: weight e^(1/T) against e^(0/T).
  const at::Tensor bank = at::tensor({1.0f, 0.0f, 0.0f, 1.0f}).reshape({2, 2});
  const dinov2::KnnClassifier knn(bank, at::tensor({0, 1}, at::kLong), 3, 20, 0.5);
  const at::Tensor s = knn.scores(at::tensor({0.0f, 2.0f}).reshape({1, 2}));
  CHECK(std::abs(s[0][0].item<double>() - 1.0) < 1e-6);
  CHECK(std::abs(s[0][1].item<double>() - std::exp(2.0)) < 1e-5);
  CHECK(s[0][2].item<double>() == 0.0);
  CHECK_THROWS_AS(dinov2::KnnClassifier(bank, at::tensor({0, 3}, at::kLong), 3),
                  dinov2::InputError);
  CHECK_THROWS_AS(dinov2::KnnClassifier(bank, at::tensor({0, 1}, at::kLong), 3, 0), dinov2::Error);
}

TEST_CASE("LinearProbe::train reaches the optimum found by Newton's method",
          "[probe][linear][parity]") {
  dinov2::LinearProbeOptions options;
  options.weight_decay = reference("probe/weight_decay").item<double>();
  options.gradient_tolerance = 1e-6;
  options.max_iterations = 1000;
  const auto probe =
      dinov2::LinearProbe::train(reference("probe/x"), reference("probe/y"), 3, options);
  CHECK(std::abs(probe.training_loss() - reference("probe/loss").item<double>()) < 1e-6);
  CHECK(probe.training_evaluations() > 0);
  const at::Tensor probs = probe.logits(reference("probe/x")).softmax(1);
  CHECK(max_abs_diff(probs, reference("probe/probs")) < 2e-3);
}

TEST_CASE("LinearProbe separates separable classes and is deterministic", "[probe][linear]") {
  const auto a =
      dinov2::LinearProbe::train(reference("probe/sep_train_x"), reference("probe/sep_train_y"), 4);
  const auto b =
      dinov2::LinearProbe::train(reference("probe/sep_train_x"), reference("probe/sep_train_y"), 4);
  CHECK(a.weight().equal(b.weight()));
  CHECK(a.bias().equal(b.bias()));
  const auto eval =
      dinov2::evaluate(a.predict(reference("probe/sep_test_x")), reference("probe/sep_test_y"), 4);
  CHECK(eval.count == 400);
  CHECK(eval.top1 >= 0.99);
}

TEST_CASE("LinearProbe files round-trip with names and metadata", "[probe][linear][io]") {
  auto probe = dinov2::LinearProbe::train(reference("probe/x"), reference("probe/y"), 3);
  probe.set_class_names({"cat", "dog", "bird"});
  probe.metadata()["backbone"] = "dinov2_vits14";
  const std::string path = data_path("analysis_test_probe.safetensors");
  probe.save(path);
  const auto back = dinov2::LinearProbe::load(path);
  CHECK(back.weight().equal(probe.weight()));
  CHECK(back.bias().equal(probe.bias()));
  CHECK(back.class_names() == std::vector<std::string>{"cat", "dog", "bird"});
  CHECK(back.metadata().at("backbone") == "dinov2_vits14");
  CHECK(back.predict(reference("probe/x")).equal(probe.predict(reference("probe/x"))));
  // The file is plain safetensors with the documented names.
  const auto raw = dinov2::load_safetensors(path);
  CHECK(raw.metadata.at("format") == "dinov2-linear-probe");
  CHECK(raw.tensors.at("weight").sizes() == at::IntArrayRef({3, 8}));

  dinov2::save_safetensors(path, dinov2::NamedTensors{{"weight", at::zeros({3, 8})}});
  CHECK_THROWS_AS(dinov2::LinearProbe::load(path), dinov2::ModelFileError);
  std::filesystem::remove(path);
  CHECK_THROWS_AS(dinov2::LinearProbe::load(path), dinov2::ModelFileError);
  CHECK_THROWS_AS(probe.set_class_names({"one"}), dinov2::Error);
  probe.metadata()["format"] = "mine";
  CHECK_THROWS_AS(probe.save(path), dinov2::Error);
}

TEST_CASE("LinearProbe::train refuses bad inputs", "[probe][linear][errors]") {
  const at::Tensor x = reference("probe/x");
  CHECK_THROWS_AS(dinov2::LinearProbe::train(x, reference("probe/y"), 2), dinov2::InputError);
  CHECK_THROWS_AS(dinov2::LinearProbe::train(x, reference("probe/y").slice(0, 0, 10), 3),
                  dinov2::InputError);
  CHECK_THROWS_AS(dinov2::LinearProbe::train(x, reference("probe/y"), 1), dinov2::Error);
  CHECK_THROWS_AS(dinov2::LinearProbe::train(x.to(at::kLong), reference("probe/y"), 3),
                  dinov2::InputError);
  const auto probe = dinov2::LinearProbe::train(x, reference("probe/y"), 3);
  CHECK_THROWS_AS(probe.logits(at::zeros({2, 7})), dinov2::InputError);
}

TEST_CASE("stratified_split keeps class proportions and is reproducible", "[probe][split]") {
  std::vector<int64_t> labels;
  for (int c = 0; c < 3; ++c) labels.insert(labels.end(), 10 + 5 * c, c);  // 10, 15, 20 rows
  labels.push_back(7);  // a class with one row stays in training
  const auto s = dinov2::stratified_split(labels, 0.2, 42);
  std::vector<int> val_count(8, 0);
  for (auto i : s.val) ++val_count[labels[i]];
  CHECK(val_count[0] == 2);
  CHECK(val_count[1] == 3);
  CHECK(val_count[2] == 4);
  CHECK(val_count[7] == 0);
  std::set<int64_t> all(s.train.begin(), s.train.end());
  for (auto i : s.val) CHECK(all.insert(i).second);  // disjoint
  CHECK(all.size() == labels.size());
  CHECK(std::is_sorted(s.val.begin(), s.val.end()));
  const auto again = dinov2::stratified_split(labels, 0.2, 42);
  CHECK(again.val == s.val);
  CHECK(dinov2::stratified_split(labels, 0.2, 43).val != s.val);
  CHECK(dinov2::stratified_split(labels, 0.0, 42).val.empty());
  CHECK(dinov2::stratified_split({0, 0}, 0.01, 1).val.size() == 1);
  CHECK_THROWS_AS(dinov2::stratified_split(labels, 1.0, 1), dinov2::Error);
}

TEST_CASE("evaluate, confusion_matrix and IoU on a hand-worked example", "[probe][scores]") {
  const at::Tensor predicted = at::tensor({0, 1, 1, 2, 0}, at::kLong);
  const at::Tensor target = at::tensor({0, 1, 2, 2, 255}, at::kLong);  // 255: ignored
  const auto e = dinov2::evaluate(predicted, target, 3);
  CHECK(e.count == 4);
  CHECK(e.correct == 3);
  CHECK(e.top1 == 0.75);
  CHECK(e.confusion.equal(at::tensor({1, 0, 0, 0, 1, 0, 0, 1, 1}, at::kLong).reshape({3, 3})));
  const auto iou = dinov2::iou_per_class(e.confusion);
  REQUIRE(iou.size() == 3);
  CHECK(iou[0] == 1.0);
  CHECK(iou[1] == 0.5);
  CHECK(iou[2] == 0.5);
  CHECK(std::abs(dinov2::mean_iou(e.confusion) - 2.0 / 3.0) < 1e-12);
  // A class absent from both targets and predictions does not count.
  const auto four = dinov2::confusion_matrix(predicted, target, 4);
  CHECK(std::isnan(dinov2::iou_per_class(four)[3]));
  CHECK(std::abs(dinov2::mean_iou(four) - 2.0 / 3.0) < 1e-12);
  CHECK_THROWS_AS(
      dinov2::confusion_matrix(at::tensor({5}, at::kLong), at::tensor({1}, at::kLong), 3),
      dinov2::InputError);
}
