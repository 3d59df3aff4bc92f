// SPDX-License-Identifier: Apache-2.0
// The linear heads against the official head maths computed in PyTorch (tests/refgen/head_refs.py).
//
// Tolerances (float32). Head only, on the very backbone outputs PyTorch used: logits (classifier
// and segmentation, of order 1) max abs error 1e-5: the same sums as the reference in another
// order, plus, for segmentation, the BatchNorm folded into the convolution at export; depth max
// relative error 1e-5: the 1x1 convolution runs before the 4x upsampling here, after it in the
// reference (equal in exact arithmetic; measured about 5e-7). End to end, the backbone runs
// again in C++, from the same file with the same kernels, so the same bounds apply to the
// logits, and depth gets 1e-4 relative for the longer chain of sums.
#include <ATen/ATen.h>

#include <fstream>
#include <functional>
#include <sstream>

#include "dinov2/classifier.hpp"
#include "dinov2/error.hpp"
#include "dinov2/heads.hpp"
#include "dinov2/model.hpp"
#include "support.hpp"

using dinov2::test::data_path;
using dinov2::test::max_abs_diff;

namespace {

constexpr double kLogitTol = 1e-5;
constexpr double kDepthRelHeadOnly = 1e-5;
constexpr double kDepthRelEndToEnd = 1e-4;

const std::map<std::string, at::Tensor>& refs() {
  static const auto r = dinov2::test::load_tensors(data_path("heads_refs.pt"));
  return r;
}

const at::Tensor& reference(const std::string& name) {
  const auto it = refs().find(name);
  if (it == refs().end()) throw std::runtime_error("no reference tensor " + name);
  return it->second;
}

std::string head(const std::string& stem) { return data_path(stem + ".pt"); }

const dinov2::Model& backbone() {
  static const dinov2::Model m = dinov2::Model::load(data_path("heads_backbone.pt"));
  return m;
}

/// The backbone outputs PyTorch fed to head `stem`, as LayerFeatures.
dinov2::LayerFeatures layers(const std::string& stem, std::vector<int64_t> indices) {
  dinov2::LayerFeatures lf;
  lf.indices = indices;
  for (size_t i = 0; i < indices.size(); ++i) {
    lf.patches.push_back(reference(stem + "/layers/patches" + std::to_string(i)));
    lf.cls.push_back(reference(stem + "/layers/cls" + std::to_string(i)));
  }
  return lf;
}

double max_rel_diff(const at::Tensor& a, const at::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  return ((a - b).abs() / b.abs()).max().item<double>();
}

/// Column `col` of a tab-separated data file of the exporter, comment lines skipped.
std::vector<std::string> tsv_column(const std::string& file, size_t col) {
  std::ifstream in(dinov2::test::source_path("python/dinov2_export/data/" + file));
  REQUIRE(in.good());
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::stringstream ss(line);
    std::string cell;
    for (size_t i = 0; i <= col; ++i) std::getline(ss, cell, '\t');
    out.push_back(cell);
  }
  return out;
}

/// The message of the dinov2::Error thrown by f (failing the test if none or another type).
template <class F>
std::string error_of(F&& f, dinov2::ErrorCode code) {
  try {
    f();
  } catch (const dinov2::Error& e) {
    CHECK(e.code() == code);
    return e.what();
  }
  FAIL("no dinov2::Error was thrown");
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("A one-layer classifier gives the official logits from Features", "[heads]") {
  const auto clf = dinov2::LinearClassifier::load(head("heads_linear"));
  CHECK(clf.info().kind == "linear_classifier");
  CHECK(clf.n_last_blocks() == 1);
  CHECK(clf.info().num_classes == 1000);
  dinov2::Features f;
  f.cls = reference("features/cls");
  f.patches = reference("features/patches");
  const double err = max_abs_diff(clf.logits(f), reference("heads_linear/logits"));
  INFO("linear logits, head only: max abs error " << err);
  CHECK(err <= kLogitTol);
}

TEST_CASE("A four-layer classifier reads the CLS of the last four blocks", "[heads]") {
  const auto clf = dinov2::LinearClassifier::load(head("heads_linear4"));
  CHECK(clf.n_last_blocks() == 4);
  CHECK(clf.info().blocks == std::vector<int64_t>{-4, -3, -2, -1});
  const double err = max_abs_diff(clf.logits(layers("heads_linear4", {8, 9, 10, 11})),
                                  reference("heads_linear4/logits"));
  INFO("linear4 logits, head only: max abs error " << err);
  CHECK(err <= kLogitTol);

  dinov2::Features f;
  f.cls = reference("features/cls");
  f.patches = reference("features/patches");
  const auto msg = error_of([&] { clf.logits(f); }, dinov2::ErrorCode::kBadInput);
  CHECK(contains(msg, "last 4 blocks"));
}

TEST_CASE("Classifiers run end to end on a backbone file", "[heads][model]") {
  for (const std::string stem : {"heads_linear", "heads_linear4"}) {
    const auto clf = dinov2::LinearClassifier::load(head(stem), backbone());
    const auto lf = backbone().intermediate_layers(reference("pixels"), clf.layers());
    const at::Tensor logits = clf.logits(lf);
    const double err = max_abs_diff(logits, reference(stem + "/logits"));
    INFO(stem << " logits, end to end: max abs error " << err);
    CHECK(err <= kLogitTol);
    CHECK(at::equal(clf.predict(lf), logits.argmax(1)));

    // The same head behind the Classifier interface that also takes trained probes.
    const auto any = dinov2::Classifier::load(head(stem), backbone());
    CHECK(any.kind() == dinov2::Classifier::Kind::kLinearHead);
    CHECK(any.layers().blocks == clf.info().blocks);
    CHECK(any.num_classes() == 1000);
    CHECK(at::equal(any.logits(lf), logits));
    CHECK(any.recipe().to_string() == dinov2::Recipe::eval_center_crop().to_string());
  }
}

TEST_CASE("Classifier runs a trained probe through the same interface as a head",
          "[heads][model]") {
  dinov2::test::TempDir dir;
  const auto lf = backbone().intermediate_layers(reference("pixels"), dinov2::LayerRequest{});
  const at::Tensor pooled = at::cat({lf.cls[0], lf.patches[0].mean({1, 2})}, 1);  // [2, 768]
  // A probe on random features of the widths the backbone gives (pooled 768, CLS 384).
  at::manual_seed(7);
  for (const bool cls : {false, true}) {
    const int64_t width = cls ? 384 : 768;
    auto probe = dinov2::LinearProbe::train(at::randn({12, width}),
                                            at::arange(12, at::kLong).remainder(3), 3);
    probe.set_class_names({"a", "b", "c"});
    probe.metadata()["variant"] = backbone().info().variant;
    probe.metadata()["features"] = cls ? "cls" : "pooled";
    probe.metadata()["recipe"] = "square(224)";
    const std::string path = dir.file(cls ? "cls.safetensors" : "pooled.safetensors");
    probe.save(path);

    const auto c = dinov2::Classifier::load(path, backbone());
    CHECK(c.kind() == dinov2::Classifier::Kind::kProbe);
    CHECK(c.layers().blocks == std::vector<int64_t>{-1});
    CHECK(c.layers().norm);
    CHECK(c.num_classes() == 3);
    CHECK(c.recipe().to_string() == "square(224)");
    const at::Tensor expected = probe.logits(cls ? lf.cls[0] : pooled);
    const at::Tensor logits = c.logits(lf);
    CHECK(max_abs_diff(logits, expected) == 0.0);
    CHECK(at::equal(c.predict(lf), expected.argmax(1)));
    const auto top = c.top_k(logits, 3);
    REQUIRE(top.size() == 2);
    CHECK(top[0][0].name == std::string(1, static_cast<char>('a' + top[0][0].index)));
  }

  // Probes made for other features are refused when loaded, naming the mismatch.
  auto probe = dinov2::LinearProbe::train(at::randn({6, 768}), at::arange(6).remainder(2), 2);
  probe.metadata()["variant"] = "dinov2_vitb14";
  probe.save(dir.file("other.safetensors"));
  auto msg = error_of([&] { dinov2::Classifier::load(dir.file("other.safetensors"), backbone()); },
                      dinov2::ErrorCode::kModelFile);
  CHECK(contains(msg, "trained on dinov2_vitb14 features but the model is dinov2_vits14"));
  probe.metadata()["variant"] = backbone().info().variant;
  probe.metadata()["features"] = "cls";  // 768 wide, but the CLS token is 384 wide
  probe.save(dir.file("wide.safetensors"));
  msg = error_of([&] { dinov2::Classifier::load(dir.file("wide.safetensors"), backbone()); },
                 dinov2::ErrorCode::kModelFile);
  CHECK(contains(msg, "reads 768-wide features but the model gives 384-wide ones"));
  const std::string text = dir.write("notes.txt", "neither a head nor a probe");
  msg =
      error_of([&] { dinov2::Classifier::load(text, backbone()); }, dinov2::ErrorCode::kModelFile);
  CHECK(contains(msg, "notes.txt"));
}

TEST_CASE("top_k without class names names each class by its index", "[heads]") {
  const at::Tensor logits = at::tensor({0.0f, 3.0f, 1.0f, 2.0f}).view({1, 4});
  const auto top = dinov2::top_k(logits, 2, {});
  REQUIRE(top.size() == 1);
  REQUIRE(top[0].size() == 2);
  CHECK(top[0][0].index == 1);
  CHECK(top[0][0].name == "1");
  CHECK(top[0][1].index == 3);
  const double p1 = std::exp(3.0) / (1.0 + std::exp(3.0) + std::exp(1.0) + std::exp(2.0));
  CHECK(std::abs(top[0][0].probability - p1) < 1e-6);
  auto msg = error_of(
      [&] {
        dinov2::top_k(logits, 2, {"a", "b"});
      },
      dinov2::ErrorCode::kInvalidArgument);
  CHECK(contains(msg, "2 class names for 4 classes"));
  msg = error_of([&] { dinov2::top_k(logits, 5, {}); }, dinov2::ErrorCode::kInvalidArgument);
  CHECK(contains(msg, "k is 5; it must be in 1..4"));
}

TEST_CASE("top_k gives the most probable classes with their ImageNet names", "[heads]") {
  const auto clf = dinov2::LinearClassifier::load(head("heads_linear4"));
  const auto names = tsv_column("imagenet1k_classes.tsv", 1);
  REQUIRE(names.size() == 1000);
  CHECK(names[0] == "tench");
  const at::Tensor top5 = reference("heads_linear4/top5");
  const at::Tensor prob5 = reference("heads_linear4/top5_prob");
  const auto top = clf.top_k(reference("heads_linear4/logits"), 5);
  REQUIRE(top.size() == 2);
  for (size_t b = 0; b < top.size(); ++b) {
    REQUIRE(top[b].size() == 5);
    for (int64_t j = 0; j < 5; ++j) {
      const auto& s = top[b][static_cast<size_t>(j)];
      const auto bi = static_cast<int64_t>(b);
      CHECK(s.index == top5[bi][j].item<int64_t>());
      CHECK(s.name == names[static_cast<size_t>(s.index)]);
      CHECK(std::abs(s.probability - prob5[bi][j].item<float>()) <= 1e-7);
      if (j > 0) CHECK(s.probability <= top[b][static_cast<size_t>(j - 1)].probability);
    }
  }
  CHECK(clf.top_k(reference("heads_linear4/logits"), 1000)[0].size() == 1000);
  const auto msg = error_of([&] { clf.top_k(reference("heads_linear4/logits"), 0); },
                            dinov2::ErrorCode::kInvalidArgument);
  CHECK(contains(msg, "k is 0"));
}

TEST_CASE("Depth heads give the official depth map at the input resolution", "[heads]") {
  struct Case {
    std::string stem;
    std::vector<int64_t> blocks;
    double max_depth;
  };
  for (const Case& c :
       {Case{"heads_depth_nyu", {11}, 10.0}, Case{"heads_depth4_kitti", {2, 5, 8, 11}, 80.0}}) {
    const auto depth_head = dinov2::DepthHead::load(head(c.stem));
    CHECK(depth_head.info().blocks == c.blocks);
    CHECK_FALSE(depth_head.info().norm);
    CHECK(depth_head.info().max_depth == c.max_depth);
    CHECK(depth_head.info().bins == 256);
    const at::Tensor expected = reference(c.stem + "/depth");
    const at::Tensor depth = depth_head.predict(layers(c.stem, c.blocks));
    REQUIRE(depth.sizes() == expected.sizes());  // [2, 70, 126]: 14 x the 5 x 9 grid
    const double err = max_rel_diff(depth, expected);
    INFO(c.stem << " depth, head only: max relative error " << err);
    CHECK(err <= kDepthRelHeadOnly);
    CHECK(depth.min().item<double>() >= depth_head.info().min_depth);
    CHECK(depth.max().item<double>() <= c.max_depth);

    const at::Tensor half = depth_head.predict(layers(c.stem, c.blocks), 35, 63);
    CHECK(half.sizes() == at::IntArrayRef({2, 35, 63}));

    const auto e2e = dinov2::DepthHead::load(head(c.stem), backbone());
    const double err2 = max_rel_diff(
        e2e.predict(backbone().intermediate_layers(reference("pixels"), e2e.layers())), expected);
    INFO(c.stem << " depth, end to end: max relative error " << err2);
    CHECK(err2 <= kDepthRelEndToEnd);
  }
}

TEST_CASE("Segmentation heads give the official logits and labels", "[heads]") {
  for (const std::string stem : {"heads_seg_ade20k", "heads_seg_voc2012"}) {
    const auto seg = dinov2::SegmentationHead::load(head(stem));
    CHECK(seg.info().blocks == std::vector<int64_t>{11});
    CHECK(seg.info().norm);
    const at::Tensor expected = reference(stem + "/logits");
    const at::Tensor logits = seg.logits(layers(stem, {11}));
    REQUIRE(logits.sizes() == expected.sizes());
    const double err = max_abs_diff(logits, expected);
    INFO(stem << " logits, head only: max abs error " << err);
    CHECK(err <= kLogitTol);

    // Features hold the last block's normed patches, the very input of this head.
    dinov2::Features f;
    f.cls = reference("features/cls");
    f.patches = reference("features/patches");
    CHECK(max_abs_diff(seg.logits(f), expected) <= kLogitTol);

    const auto e2e = dinov2::SegmentationHead::load(head(stem), backbone());
    const auto lf = backbone().intermediate_layers(reference("pixels"), e2e.layers());
    const double err2 = max_abs_diff(e2e.logits(lf), expected);
    INFO(stem << " logits, end to end: max abs error " << err2);
    CHECK(err2 <= kLogitTol);

    // Labels: the arg-max of the logits resized to the input; a pixel may only differ where the
    // two best classes are within the logit tolerance of each other.
    const at::Tensor labels = e2e.predict(lf);
    REQUIRE(labels.sizes() == at::IntArrayRef({2, 70, 126}));
    CHECK(labels.scalar_type() == at::kLong);
    const at::Tensor differ = labels.ne(reference(stem + "/labels"));
    const at::Tensor close_call = reference(stem + "/margin").le(4 * kLogitTol);
    CHECK(differ.logical_and(close_call.logical_not()).sum().item<int64_t>() == 0);
    CHECK(std::get<0>(at::_unique(labels)).numel() > 3);
  }
}

TEST_CASE("colorize paints labels with the dataset palette", "[heads]") {
  const auto seg = dinov2::SegmentationHead::load(head("heads_seg_ade20k"));
  const auto names = tsv_column("ade20k_classes.tsv", 0);
  const auto reds = tsv_column("ade20k_classes.tsv", 1);
  const auto greens = tsv_column("ade20k_classes.tsv", 2);
  const auto blues = tsv_column("ade20k_classes.tsv", 3);
  REQUIRE(names.size() == 150);
  CHECK(seg.info().class_names == names);
  const at::Tensor labels = reference("heads_seg_ade20k/labels");
  const at::Tensor rgb = seg.colorize(labels);
  REQUIRE(rgb.sizes() == at::IntArrayRef({2, 70, 126, 3}));
  CHECK(rgb.scalar_type() == at::kByte);
  for (int64_t y : {0, 33, 69}) {
    for (int64_t x : {0, 64, 125}) {
      const auto k = static_cast<size_t>(labels[1][y][x].item<int64_t>());
      CHECK(rgb[1][y][x][0].item<int>() == std::stoi(reds[k]));
      CHECK(rgb[1][y][x][1].item<int>() == std::stoi(greens[k]));
      CHECK(rgb[1][y][x][2].item<int>() == std::stoi(blues[k]));
    }
  }
  const auto msg = error_of([&] { seg.colorize(labels + 150); }, dinov2::ErrorCode::kBadInput);
  CHECK(contains(msg, "outside 0..149"));
}

TEST_CASE("Head files that do not fit are refused with a dinov2::Error naming the problem",
          "[heads][errors]") {
  using dinov2::ErrorCode;
  const auto file = ErrorCode::kModelFile;
  std::string msg;

  msg = error_of([] { dinov2::LinearClassifier::load(data_path("heads_missing.pt")); }, file);
  CHECK(contains(msg, "does not exist"));
  msg = error_of([] { dinov2::LinearClassifier::load(data_path("heads_not_archive.pth")); }, file);
  CHECK(contains(msg, "not a TorchScript archive"));
  CHECK(contains(msg, "dinov2-export-head"));
  msg = error_of([] { dinov2::DepthHead::load(head("heads_no_json")); }, file);
  CHECK(contains(msg, "not a dinov2 head"));
  msg = error_of([] { dinov2::SegmentationHead::load(head("heads_backbone")); }, file);
  CHECK(contains(msg, "backbone file, not a head"));
  msg = error_of([] { dinov2::LinearClassifier::load(head("heads_v99")); }, file);
  CHECK(contains(msg, "format version 99"));
  // A damaged pickle: TorchScript's ErrorReport must leave as ModelFileError too (fuzz_head).
  for (const auto& load : std::vector<std::function<void()>>{
           [] { dinov2::LinearClassifier::load(head("heads_bad_pickle")); },
           [] { dinov2::DepthHead::load(head("heads_bad_pickle")); },
           [] { dinov2::SegmentationHead::load(head("heads_bad_pickle")); },
           // The same with garbage debug pickles, which the loaders leave unread.
           [] { dinov2::LinearClassifier::load(head("heads_bad_debug")); }}) {
    msg = error_of(load, file);
    CHECK(contains(msg, "heads_bad_"));
    CHECK(contains(msg, "does not compile"));
  }
  // A memo index of 2^30 (16 GB of memo table in LibTorch's unpickler): refused before loading.
  msg = error_of([] { dinov2::SegmentationHead::load(head("heads_memo_bomb")); }, file);
  CHECK(contains(msg, "memo index 1073741824"));
  CHECK(contains(msg, "data.pkl"));

  // Wrong kind: the message names the class that loads it.
  msg = error_of([] { dinov2::DepthHead::load(head("heads_linear")); }, file);
  CHECK(contains(msg, "linear_classifier head"));
  CHECK(contains(msg, "LinearClassifier::load"));
  msg = error_of([] { dinov2::LinearClassifier::load(head("heads_seg_voc2012")); }, file);
  CHECK(contains(msg, "SegmentationHead::load"));

  // Heads that do not fit the model.
  msg = error_of([] { dinov2::LinearClassifier::load(head("heads_linear_vitb14"), backbone()); },
                 file);
  CHECK(contains(msg, "dinov2: head expects width 768 (dinov2_vitb14), model has 384"));
  msg = error_of(
      [] { dinov2::LinearClassifier::load(head("heads_linear_vits14_reg"), backbone()); }, file);
  CHECK(contains(msg, "trained on dinov2_vits14_reg, but the model is dinov2_vits14"));
  const auto clf = dinov2::LinearClassifier::load(head("heads_linear_vitb14"));
  msg = error_of([&] { clf.check_compatible(backbone().info()); }, file);
  CHECK(contains(msg, "width 768"));
  const auto reduced = dinov2::Model::load(data_path("heads_backbone_d2.pt"));
  msg = error_of([&] { dinov2::DepthHead::load(head("heads_depth4_kitti"), reduced); }, file);
  CHECK(contains(msg, "reads block 2, but the model has 2 blocks"));
  msg = error_of([&] { dinov2::LinearClassifier::load(head("heads_linear4"), reduced); }, file);
  CHECK(contains(msg, "reads block -4, but the model has 2 blocks"));

  // Features that are not what the head reads.
  const auto depth4 = dinov2::DepthHead::load(head("heads_depth4_kitti"));
  msg = error_of(
      [&] {
        depth4.predict(layers("heads_depth4_kitti", {1, 5, 8, 11}));
      },
      ErrorCode::kBadInput);
  CHECK(contains(msg, "reads blocks 2,5,8,11, but the features come from blocks 1,5,8,11"));
  msg = error_of([&] { depth4.predict(layers("heads_depth_nyu", {11})); }, ErrorCode::kBadInput);
  CHECK(contains(msg, "reads 4 block(s)"));
  const auto seg = dinov2::SegmentationHead::load(head("heads_seg_ade20k"));
  dinov2::Features f;
  f.patches = reference("features/patches").narrow(3, 0, 100);
  msg = error_of([&] { seg.logits(f); }, ErrorCode::kBadInput);
  CHECK(contains(msg, "must be [B, h, w, 384], got [2, 5, 9, 100]"));
}
