// SPDX-License-Identifier: Apache-2.0
// Preprocessor against Pillow (tests/refgen/preprocess_refs.py), recipe geometry computed by
// hand, the cv::Mat / tensor adapters, and every error path.
//
// Tolerances: the 8-bit resampler follows Pillow's fixed-point arithmetic, so the requirement is
// the one of the specification (at least 99.9 % of samples within 1 of Pillow's uint8 result);
// the measured agreement is printed with DINOV2_TEST_VERBOSE=1 (=2: per case). Normalisation is the
// float32 formula of ToTensor + Normalize: 1e-6 where the uint8 samples agree, and one uint8 step
// (1 / (255 * 0.224) = 0.0176 at most) where they do not. Floating inputs follow Pillow's mode
// "F" (double accumulation, float32 storage): 1e-5 on the [0, 1] scale.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dinov2/error.hpp"
#include "dinov2/opencv.hpp"
#include "dinov2/preprocess.hpp"
#include "support.hpp"

using dinov2::Batch;
using dinov2::ChannelOrder;
using dinov2::ImageView;
using dinov2::InputError;
using dinov2::Normalization;
using dinov2::PatchGrid;
using dinov2::Preprocessor;
using dinov2::Recipe;
using dinov2::SampleType;
using dinov2::TensorLayout;
using dinov2::test::ContainsSubstring;
using dinov2::test::data_path;
using dinov2::test::max_abs_diff;
using dinov2::test::source_path;

namespace {

constexpr double kNormTol = 1e-6;
constexpr double kOneStep = 1.0 / (255.0 * 0.224) + 1e-6;
constexpr double kFloatTol = 1e-5;

using Refs = std::map<std::string, at::Tensor>;

const Refs& refs() {
  static const Refs r = dinov2::test::load_tensors(data_path("preprocess_refs.pt"));
  return r;
}

/// DINOV2_TEST_VERBOSE=1 prints the measured agreement; 2 also prints it per case.
int verbosity() {
  const char* v = std::getenv("DINOV2_TEST_VERBOSE");
  return v == nullptr ? 0 : std::max(1, std::atoi(v));
}
bool verbose() { return verbosity() > 0; }

/// One reference case: input NAME under RECIPE (keys "NAME@RECIPE/resized" and "/pixels").
struct Case {
  std::string name;
  std::string recipe;
  at::Tensor resized;
  at::Tensor pixels;  // undefined where the generator did not store it
};

std::vector<Case> cases() {
  std::vector<Case> out;
  const Refs& r = refs();
  for (const auto& [key, tensor] : r) {
    const auto at_sign = key.find('@');
    const std::string suffix = "/resized";
    if (at_sign == std::string::npos || key.size() < suffix.size() ||
        key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    Case c;
    c.name = key.substr(0, at_sign);
    c.recipe = key.substr(at_sign + 1, key.size() - suffix.size() - at_sign - 1);
    c.resized = tensor;
    const auto p = r.find(c.name + "@" + c.recipe + "/pixels");
    if (p != r.end()) c.pixels = p->second;
    out.push_back(c);
  }
  return out;
}

/// A reference input as a cv::Mat in OpenCV's own convention (BGR / BGRA), so that the parity
/// tests go through the cv::Mat adapter. uint16 inputs are stored as int32 by the generator.
cv::Mat input_mat(const std::string& name) {
  at::Tensor t = refs().at("input/" + name).contiguous();
  const int h = static_cast<int>(t.size(0));
  const int w = static_cast<int>(t.size(1));
  const int c = static_cast<int>(t.size(2));
  cv::Mat m;
  if (t.scalar_type() == at::kByte) {
    m = cv::Mat(h, w, CV_8UC(c), t.data_ptr()).clone();
  } else if (t.scalar_type() == at::kFloat) {
    m = cv::Mat(h, w, CV_32FC(c), t.data_ptr()).clone();
  } else {
    cv::Mat(h, w, CV_32SC(c), t.data_ptr()).convertTo(m, CV_16U);
  }
  if (c == 3) cv::cvtColor(m, m, cv::COLOR_RGB2BGR);
  if (c == 4) cv::cvtColor(m, m, cv::COLOR_RGBA2BGRA);
  return m;
}

/// Agreement of 8-bit images: counts of samples that are equal and within 1.
struct Agreement {
  int64_t samples = 0;
  int64_t exact = 0;
  int64_t within_one = 0;
  int max_diff = 0;
  void add(const at::Tensor& ours, const at::Tensor& ref) {
    const at::Tensor d = (ours.to(at::kInt) - ref.to(at::kInt)).abs();
    samples += d.numel();
    exact += d.eq(0).sum().item<int64_t>();
    within_one += d.le(1).sum().item<int64_t>();
    max_diff = std::max(max_diff, d.max().item<int>());
  }
  double exact_pct() const { return 100.0 * static_cast<double>(exact) / samples; }
  double within_one_pct() const { return 100.0 * static_cast<double>(within_one) / samples; }
};

/// The message of the InputError `f` throws; fails the test otherwise.
template <class F>
std::string input_error(F&& f) {
  return dinov2::test::message_of<InputError>(std::forward<F>(f));
}

#define REQUIRE_INPUT_ERROR(expr, fragment)                          \
  do {                                                               \
    const std::string message_ = input_error([&] { (void)(expr); }); \
    CHECK_THAT(message_, ContainsSubstring("dinov2: "));             \
    CHECK_THAT(message_, ContainsSubstring(fragment));               \
  } while (false)

cv::Mat photo(const std::string& file) {
  return dinov2::load_image(source_path("examples/data/" + file));
}

at::Tensor rgb_tensor(const cv::Mat& bgr) {
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return at::from_blob(rgb.data, {rgb.rows, rgb.cols, 3}, at::kByte).clone();
}

void check_grid(const PatchGrid& g, int64_t rows, int64_t cols, double x, double y, double w,
                double h) {
  CHECK(g.rows == rows);
  CHECK(g.cols == cols);
  CHECK(g.patch_size == 14);
  CHECK(std::abs(g.crop_x - x) < 1e-9);
  CHECK(std::abs(g.crop_y - y) < 1e-9);
  CHECK(std::abs(g.crop_width - w) < 1e-9);
  CHECK(std::abs(g.crop_height - h) < 1e-9);
}

}  // namespace

// -----------------------------------------------------------------------------------------------
// Agreement with Pillow

TEST_CASE("8-bit images are resized as Pillow resizes them, for every recipe",
          "[preprocess][parity]") {
  std::map<std::string, Agreement> by_recipe;
  std::map<std::string, int> count;
  double worst_normalised_agreeing = 0.0;
  double worst_normalised = 0.0;
  int64_t normalised_cases = 0;
  for (const Case& c : cases()) {
    if (c.resized.scalar_type() != at::kByte) continue;
    INFO("case " << c.name << " under " << c.recipe);
    const Preprocessor pre(Recipe::parse(c.recipe));
    const cv::Mat mat = input_mat(c.name);
    const at::Tensor ours = pre.resized(dinov2::image_view(mat));
    REQUIRE(ours.sizes() == c.resized.sizes());
    REQUIRE(ours.scalar_type() == at::kByte);
    Agreement a;
    a.add(ours, c.resized);
    by_recipe[c.recipe].add(ours, c.resized);
    ++count[c.recipe];
    CHECK(a.within_one_pct() >= 99.9);
    if (verbosity() > 1) {
      std::printf("  %-18s %-28s exact %8.4f %% within1 %8.4f %% max %d\n", c.name.c_str(),
                  c.recipe.c_str(), a.exact_pct(), a.within_one_pct(), a.max_diff);
    }

    const Batch batch = pre(dinov2::image_view(mat));
    REQUIRE(batch.pixels.sizes() == at::IntArrayRef({1, 3, c.resized.size(0), c.resized.size(1)}));
    REQUIRE(batch.grids.size() == 1);
    CHECK(batch.grids[0].height() == c.resized.size(0));
    CHECK(batch.grids[0].width() == c.resized.size(1));
    CHECK(batch.grids[0].original_height == mat.rows);
    CHECK(batch.grids[0].original_width == mat.cols);
    if (c.pixels.defined()) {
      ++normalised_cases;
      const at::Tensor diff = (batch.pixels[0] - c.pixels).abs();
      // Where our uint8 sample equals Pillow's, the normalised value is the same float32 formula.
      const at::Tensor agree = ours.permute({2, 0, 1}).eq(c.resized.permute({2, 0, 1}));
      const double agreeing = diff.masked_select(agree).max().item<double>();
      const double all = diff.max().item<double>();
      worst_normalised_agreeing = std::max(worst_normalised_agreeing, agreeing);
      worst_normalised = std::max(worst_normalised, all);
      CHECK(agreeing <= kNormTol);
      CHECK(all <= kOneStep);
    }
  }
  // Every input of the generator under every recipe: 5 photographs and 7 synthetic images.
  REQUIRE(count.size() == 6);
  for (const auto& [recipe, n] : count) {
    INFO("recipe " << recipe);
    CHECK(n == 12);
  }
  CHECK(normalised_cases >= 30);
  if (verbose()) {
    std::printf("%-28s %10s %9s %10s %5s\n", "recipe (8-bit)", "samples", "exact %", "within1 %",
                "max");
  }
  for (const auto& [recipe, a] : by_recipe) {
    INFO("recipe " << recipe);
    CHECK(a.within_one_pct() >= 99.9);
    if (verbose()) {
      std::printf("%-28s %10lld %9.4f %10.4f %5d\n", recipe.c_str(),
                  static_cast<long long>(a.samples), a.exact_pct(), a.within_one_pct(), a.max_diff);
    }
  }
  if (verbose()) {
    std::printf("normalised: max |diff| %.3g where uint8 agrees, %.3g overall (%lld cases)\n",
                worst_normalised_agreeing, worst_normalised,
                static_cast<long long>(normalised_cases));
  }
}

TEST_CASE("16-bit and float images are resized as Pillow's mode F resizes them",
          "[preprocess][parity]") {
  int n = 0;
  double worst = 0.0;
  double worst_pixels = 0.0;
  for (const Case& c : cases()) {
    if (c.resized.scalar_type() != at::kFloat) continue;
    INFO("case " << c.name << " under " << c.recipe);
    ++n;
    const Preprocessor pre(Recipe::parse(c.recipe));
    const cv::Mat mat = input_mat(c.name);
    CHECK(mat.depth() == (c.name.rfind("u16_", 0) == 0 ? CV_16U : CV_32F));
    const at::Tensor ours = pre.resized(dinov2::image_view(mat));
    REQUIRE(ours.scalar_type() == at::kFloat);
    REQUIRE(ours.sizes() == c.resized.sizes());
    const double d = max_abs_diff(ours, c.resized);
    worst = std::max(worst, d);
    CHECK(d <= kFloatTol);
    if (c.pixels.defined()) {
      const double dp = max_abs_diff(pre(dinov2::image_view(mat)).pixels[0], c.pixels);
      worst_pixels = std::max(worst_pixels, dp);
      // kFloatTol on [0, 1] divided by the smallest std.
      CHECK(dp <= kFloatTol / 0.224);
    }
  }
  CHECK(n == 9);
  if (verbose()) {
    std::printf("float/16-bit inputs: max |diff| %.3g before, %.3g after normalisation\n", worst,
                worst_pixels);
  }
}

TEST_CASE("load_image decodes the sample photographs as Pillow does", "[preprocess][opencv]") {
  for (const char* file :
       {"astronaut.jpg", "coffee.jpg", "chelsea.png", "rocket.jpg", "camera.png"}) {
    INFO(file);
    const at::Tensor ours = rgb_tensor(photo(file));
    const at::Tensor ref = refs().at(std::string("decoded/") + file);
    REQUIRE(ours.sizes() == ref.sizes());
    Agreement a;
    a.add(ours, ref);
    if (verbose()) {
      std::printf("decode %-14s exact %.4f %%, within 1 %.4f %%, max %d\n", file, a.exact_pct(),
                  a.within_one_pct(), a.max_diff);
    }
    // PNG is lossless: identical. JPEG decoders may round the inverse DCT differently; both
    // Pillow and OpenCV use libjpeg-turbo here, so the difference is small if not zero.
    if (std::string(file).find(".png") != std::string::npos) {
      CHECK(a.exact == a.samples);
    } else {
      CHECK(a.within_one_pct() >= 99.0);
    }
  }
}

// -----------------------------------------------------------------------------------------------
// Geometry, computed by hand

TEST_CASE("square and resize recipes cover the whole image", "[preprocess][recipe]") {
  const auto p = Recipe::square().plan(300, 451);
  CHECK(p.resized_height == 518);
  CHECK(p.resized_width == 518);
  CHECK(p.crop_top == 0);
  CHECK(p.crop_left == 0);
  check_grid(p.grid, 37, 37, 0, 0, 451, 300);
  CHECK(p.grid.original_height == 300);
  CHECK(p.grid.original_width == 451);

  const auto q = Recipe::resize(224, 308).plan(100, 60);
  CHECK(q.resized_height == 224);
  CHECK(q.resized_width == 308);
  check_grid(q.grid, 16, 22, 0, 0, 60, 100);
}

TEST_CASE("token_bound is the largest grid a recipe can give, known before any image",
          "[preprocess][recipe]") {
  CHECK(Recipe::square(518).token_bound() == 37 * 37);
  CHECK(Recipe::resize(14000, 14000).token_bound() == 1000 * 1000);
  CHECK(Recipe::eval_center_crop(256, 224).token_bound() == 16 * 16);
  CHECK(Recipe::patch_aligned(518).token_bound() == 37 * 37);
  CHECK(Recipe::patch_aligned(1036, 1000).token_bound() == 1000);
  for (const auto& [h, w] : {std::pair<int64_t, int64_t>{300, 451}, {451, 300}, {17, 2000}}) {
    for (const auto& r : {Recipe::patch_aligned(518), Recipe::patch_aligned(1036, 1000)}) {
      const auto g = r.plan(h, w).grid;
      CHECK(g.rows * g.cols <= r.token_bound());
    }
  }
}

TEST_CASE("a plan whose resized image is too large is refused before any pixel",
          "[preprocess][recipe][errors]") {
  // eval_center_crop of a 1x3000 strip: shorter side 1 -> 256, longer 3000 -> 768,000.
  CHECK_THROWS_WITH(Recipe::eval_center_crop(256, 224).plan(1, 3000),
                    ContainsSubstring("over the limit of 178956970 pixels (kMaxResizedPixels)"));
  CHECK(Recipe::eval_center_crop(256, 224).plan(10, 3000).resized_width == 76800);
}

TEST_CASE("eval_center_crop resizes the shorter side and crops the centre as torchvision does",
          "[preprocess][recipe]") {
  const Recipe r = Recipe::eval_center_crop();
  // Landscape 451 x 300: short side 300 -> 256, long side int(256 * 451 / 300) = int(384.85).
  auto p = r.plan(300, 451);
  CHECK(p.resized_height == 256);
  CHECK(p.resized_width == 384);
  CHECK(p.crop_top == 16);   // (256 - 224) / 2
  CHECK(p.crop_left == 80);  // (384 - 224) / 2
  // Back in original pixels: scale 451 / 384 across, 300 / 256 down.
  check_grid(p.grid, 16, 16, 80 * 451.0 / 384, 16 * 300.0 / 256, 224 * 451.0 / 384,
             224 * 300.0 / 256);

  // Portrait: the roles swap.
  p = r.plan(451, 300);
  CHECK(p.resized_height == 384);
  CHECK(p.resized_width == 256);
  CHECK(p.crop_top == 80);
  CHECK(p.crop_left == 16);

  // Odd margins round half to even, as Python's round(): 35 / 2 = 17.5 -> 18, 33 / 2 = 16.5 -> 16.
  CHECK(r.plan(256, 259).crop_left == 18);
  CHECK(r.plan(256, 257).crop_left == 16);
  CHECK(r.plan(259, 256).crop_top == 18);

  // A square image is resized to 256 x 256 and cropped at 16.
  p = r.plan(1000, 1000);
  CHECK(p.resized_height == 256);
  CHECK(p.resized_width == 256);
  check_grid(p.grid, 16, 16, 16 * 1000.0 / 256, 16 * 1000.0 / 256, 875, 875);
}

TEST_CASE("patch_aligned keeps the aspect ratio, rounds to patches and caps the tokens",
          "[preprocess][recipe]") {
  // 451 x 300 at 518: scale 518 / 451; rows round(300 * 518 / 451 / 14) = round(24.61) = 25,
  // cols 37.
  auto p = Recipe::patch_aligned().plan(300, 451);
  CHECK(p.resized_height == 350);
  CHECK(p.resized_width == 518);
  check_grid(p.grid, 25, 37, 0, 0, 451, 300);

  // With a cap of 64 tokens at 224: rows 10.643 -> 11, cols 16: 176 > 64, so both shrink by
  // sqrt(64 / (10.643 * 16)) = 0.61305: floor(6.525) = 6, floor(9.809) = 9 -> 54 tokens.
  p = Recipe::patch_aligned(224, 64).plan(300, 451);
  CHECK(p.grid.rows == 6);
  CHECK(p.grid.cols == 9);

  // Tall and narrow: 1000 x 37 at 518: rows 37, cols round(1.369) = 1.
  p = Recipe::patch_aligned().plan(1000, 37);
  CHECK(p.grid.rows == 37);
  CHECK(p.grid.cols == 1);

  // A side clamped to one patch can leave too many tokens; the other side takes the cap:
  // 100000 x 10 at 2800 with 100 tokens: rows 200 -> 5 * 200 = 1000 -> capped at 100.
  p = Recipe::patch_aligned(2800, 100).plan(10, 100000);
  CHECK(p.grid.rows == 1);
  CHECK(p.grid.cols == 100);

  // A 518 x 518 image stays 518 x 518; a tiny image is upscaled to the target.
  CHECK(Recipe::patch_aligned().plan(518, 518).grid.tokens() == 37 * 37);
  CHECK(Recipe::patch_aligned().plan(14, 14).grid.rows == 37);
  // The default cap leaves large targets alone until 16384 tokens: 2100 x 2100 is 150 x 150
  // patches = 22500 > 16384, so it shrinks to floor(150 * sqrt(16384 / 22500)) = 128.
  p = Recipe::patch_aligned(2100).plan(3000, 3000);
  CHECK(p.grid.rows == 128);
  CHECK(p.grid.cols == 128);
}

TEST_CASE("recipes print and parse as text", "[preprocess][recipe]") {
  for (const Recipe& r : {Recipe::square(), Recipe::square(224), Recipe::eval_center_crop(),
                          Recipe::patch_aligned(518, 1000), Recipe::resize(224, 308)}) {
    CHECK(Recipe::parse(r.to_string()) == r);
  }
  CHECK(Recipe::square().to_string() == "square(518)");
  CHECK(Recipe::eval_center_crop().to_string() == "eval_center_crop(256,224)");
  CHECK(Recipe::patch_aligned().to_string() == "patch_aligned(518,16384)");
  CHECK(Recipe::parse(" eval_center_crop ( 292 , 266 ) ") == Recipe::eval_center_crop(292, 266));
  CHECK(Recipe::parse("square") == Recipe::square(518));
  CHECK(Recipe::parse("patch_aligned(448)") == Recipe::patch_aligned(448, 16384));
  CHECK(Recipe::square() != Recipe::square(224));
}

// -----------------------------------------------------------------------------------------------
// Inputs: every route to the same pixels gives the same batch

TEST_CASE("tensor inputs give the same batch as the cv::Mat path", "[preprocess][tensor]") {
  const Preprocessor pre(Recipe::eval_center_crop());
  const cv::Mat bgr = photo("chelsea.png");
  const Batch reference = pre(dinov2::image_view(bgr));
  const at::Tensor hwc = rgb_tensor(bgr);

  SECTION("uint8 HWC, CHW, explicit layouts, batches and BGR order") {
    CHECK(at::equal(pre(hwc).pixels, reference.pixels));
    CHECK(at::equal(pre(hwc.permute({2, 0, 1})).pixels, reference.pixels));
    CHECK(at::equal(pre(hwc.permute({2, 0, 1}), TensorLayout::kCHW).pixels, reference.pixels));
    CHECK(at::equal(pre(hwc, TensorLayout::kHWC).pixels, reference.pixels));
    const Batch two = pre(at::stack({hwc, hwc}));
    REQUIRE(two.pixels.size(0) == 2);
    CHECK(at::equal(two.pixels[1], reference.pixels[0]));
    CHECK(at::equal(pre(at::stack({hwc, hwc}).permute({0, 3, 1, 2})).pixels, two.pixels));
    CHECK(at::equal(pre(std::vector<at::Tensor>{hwc, hwc}).pixels, two.pixels));
    CHECK(at::equal(pre(hwc.flip(2), TensorLayout::kAuto, ChannelOrder::kBGR).pixels,
                    reference.pixels));
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    CHECK(at::equal(pre(dinov2::image_view(rgb, ChannelOrder::kRGB)).pixels, reference.pixels));
    CHECK(at::equal(pre.resized(hwc), pre.resized(dinov2::image_view(bgr))));
  }
  SECTION("float32, float64 and half tensors and Mats") {
    const at::Tensor f = hwc.to(at::kFloat) / 255.0f;
    cv::Mat mat_f;
    bgr.convertTo(mat_f, CV_32F, 1.0 / 255.0);
    // The tensor divides in float32, convertTo multiplies by a reciprocal: use the same values.
    cv::Mat from_tensor(static_cast<int>(f.size(0)), static_cast<int>(f.size(1)), CV_32FC3,
                        f.contiguous().data_ptr());
    cv::Mat bgr_f;
    cv::cvtColor(from_tensor, bgr_f, cv::COLOR_RGB2BGR);
    const Batch float_reference = pre(dinov2::image_view(bgr_f));
    CHECK(at::equal(pre(f).pixels, float_reference.pixels));
    CHECK(at::equal(pre(f.permute({2, 0, 1})).pixels, float_reference.pixels));
    CHECK(at::equal(pre(f.to(at::kDouble)).pixels, float_reference.pixels));
    cv::Mat bgr_d;
    bgr_f.convertTo(bgr_d, CV_64F);
    CHECK(at::equal(pre(dinov2::image_view(bgr_d)).pixels, float_reference.pixels));
    const at::Tensor half = f.to(at::kHalf);
    CHECK(at::equal(pre(half).pixels, pre(half.to(at::kFloat)).pixels));
    // Float inputs skip the byte rounding after each pass of the 8-bit path: half a step after
    // the first pass, amplified by the second pass's weights (their absolute values sum to at
    // most ~1.25), plus half a step after the second, so they differ by less than two steps.
    CHECK(max_abs_diff(float_reference.pixels, reference.pixels) <= 2 * kOneStep);
    CHECK(pre.resized(f).scalar_type() == at::kFloat);
  }
  SECTION("uint16 tensors and CV_16U Mats") {
    const at::Tensor u16 = (hwc.to(at::kInt) * 257).to(at::kUInt16);
    cv::Mat mat16;
    bgr.convertTo(mat16, CV_16U, 257.0);
    CHECK(at::equal(pre(u16).pixels, pre(dinov2::image_view(mat16)).pixels));
    // v * 257 / 65535 is exactly v / 255: the same as the float path of v / 255.
    CHECK(max_abs_diff(pre(u16).pixels, pre(hwc.to(at::kFloat) / 255.0f).pixels) <= 1e-6);
  }
  SECTION("gray: 2-D and 1-channel tensors, CV_8UC1 Mats, replicated to RGB") {
    cv::Mat gray;
    cv::cvtColor(bgr, gray, cv::COLOR_BGR2GRAY);
    const Batch g = pre(dinov2::image_view(gray));
    const at::Tensor t = at::from_blob(gray.data, {gray.rows, gray.cols}, at::kByte).clone();
    CHECK(at::equal(pre(t).pixels, g.pixels));
    CHECK(at::equal(pre(t.unsqueeze(2)).pixels, g.pixels));
    CHECK(at::equal(pre(t.unsqueeze(0)).pixels, g.pixels));
    cv::Mat gray3;
    cv::cvtColor(gray, gray3, cv::COLOR_GRAY2BGR);
    CHECK(at::equal(pre(dinov2::image_view(gray3)).pixels, g.pixels));
  }
  SECTION("BGRA: alpha is dropped") {
    cv::Mat bgra;
    cv::cvtColor(bgr, bgra, cv::COLOR_BGR2BGRA);
    std::vector<cv::Mat> planes;
    cv::split(bgra, planes);
    cv::randu(planes[3], 0, 256);
    cv::merge(planes, bgra);
    CHECK(at::equal(pre(dinov2::image_view(bgra)).pixels, reference.pixels));
  }
  SECTION("a Mat region with padded rows") {
    cv::Mat big(bgr.rows + 20, bgr.cols + 30, CV_8UC3, cv::Scalar(1, 2, 3));
    bgr.copyTo(big(cv::Rect(10, 5, bgr.cols, bgr.rows)));
    const cv::Mat roi = big(cv::Rect(10, 5, bgr.cols, bgr.rows));
    REQUIRE_FALSE(roi.isContinuous());
    CHECK(at::equal(pre(dinov2::image_view(roi)).pixels, reference.pixels));
  }
}

TEST_CASE("the batch is float32 CPU [B, 3, H, W] normalised with the given statistics",
          "[preprocess]") {
  const cv::Mat bgr = photo("coffee.jpg");
  const Preprocessor plain(Recipe::resize(224, 308));
  const at::Tensor resized = plain.resized(dinov2::image_view(bgr));
  const Batch b = plain(dinov2::image_view(bgr));
  CHECK(b.pixels.scalar_type() == at::kFloat);
  CHECK(b.pixels.device().is_cpu());
  CHECK(b.pixels.is_contiguous());
  CHECK(b.pixels.sizes() == at::IntArrayRef({1, 3, 224, 308}));

  const Normalization half = Normalization::from({0.5, 0.5, 0.5}, {0.25, 0.5, 1.0});
  const Preprocessor custom(Recipe::resize(224, 308), half);
  CHECK(custom.normalization().stddev[0] == 0.25f);
  // (x / 255 - 0.5) / std, by the formula.
  const at::Tensor x = resized.permute({2, 0, 1}).to(at::kFloat) / 255.0f;
  const at::Tensor expected = (x - 0.5f) / at::tensor({0.25f, 0.5f, 1.0f}).reshape({3, 1, 1});
  CHECK(max_abs_diff(custom(dinov2::image_view(bgr)).pixels[0], expected) <= kNormTol);
}

TEST_CASE("one Preprocessor used from four threads gives the bits of sequential calls",
          "[preprocess][threads]") {
  // Each call also splits its rows over the resampler's own worker threads (2 per call here), so
  // this runs up to 8 threads at once: the case the TSan leg (scripts/sanitize.sh thread) watches.
  const int threads_before = at::get_num_threads();
  at::set_num_threads(2);
  const Preprocessor pre(Recipe::patch_aligned(252, 400));
  const std::vector<cv::Mat> images = {photo("coffee.jpg"), photo("chelsea.png"),
                                       photo("coffee.jpg"), photo("chelsea.png")};
  std::vector<at::Tensor> sequential;
  for (const auto& m : images) sequential.push_back(pre(dinov2::image_view(m)).pixels);
  constexpr int kRounds = 3;
  std::vector<std::vector<at::Tensor>> parallel(images.size());
  std::vector<std::string> errors(images.size());
  std::vector<std::thread> workers;
  for (size_t t = 0; t < images.size(); ++t) {
    workers.emplace_back([&, t] {
      try {
        for (int i = 0; i < kRounds; ++i) {
          parallel[t].push_back(pre(dinov2::image_view(images[t])).pixels);
        }
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  }
  for (auto& w : workers) w.join();
  at::set_num_threads(threads_before);
  for (size_t t = 0; t < images.size(); ++t) {
    INFO("thread " << t);
    CHECK(errors[t].empty());
    REQUIRE(parallel[t].size() == kRounds);
    for (const auto& p : parallel[t]) CHECK(p.equal(sequential[t]));
  }
}

TEST_CASE("group_by_shape batches images of equal input size and keeps their positions",
          "[preprocess]") {
  const Preprocessor pre(Recipe::patch_aligned());
  const cv::Mat landscape = photo("chelsea.png");  // 451 x 300 -> 518 x 350
  cv::Mat portrait;
  cv::rotate(landscape, portrait, cv::ROTATE_90_CLOCKWISE);  // 300 x 451 -> 350 x 518
  const std::vector<cv::Mat> mats{landscape, portrait, landscape};
  const auto groups = pre.group_by_shape(dinov2::image_views(mats));
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].indices == std::vector<std::size_t>{0, 2});
  CHECK(groups[1].indices == std::vector<std::size_t>{1});
  CHECK(groups[0].batch.pixels.sizes() == at::IntArrayRef({2, 3, 350, 518}));
  CHECK(groups[1].batch.pixels.sizes() == at::IntArrayRef({1, 3, 518, 350}));
  CHECK(groups[1].batch.grids[0].original_height == 451);
  CHECK(at::equal(groups[0].batch.pixels[1], pre(dinov2::image_view(landscape)).pixels[0]));
  REQUIRE_INPUT_ERROR(pre(dinov2::image_views(mats)), "group_by_shape");
}

// -----------------------------------------------------------------------------------------------
// Errors

TEST_CASE("bad images and tensors throw InputError naming the problem", "[preprocess][errors]") {
  const Preprocessor pre;
  REQUIRE_INPUT_ERROR(dinov2::image_view(cv::Mat()), "empty");
  REQUIRE_INPUT_ERROR(dinov2::image_view(cv::Mat(8, 8, CV_8UC2)), "2 channels");
  REQUIRE_INPUT_ERROR(dinov2::image_view(cv::Mat(8, 8, CV_8UC(5))), "5 channels");
  REQUIRE_INPUT_ERROR(dinov2::image_view(cv::Mat(8, 8, CV_8SC3)), "CV_8S");
  REQUIRE_INPUT_ERROR(dinov2::image_view(cv::Mat(8, 8, CV_32SC3)), "CV_32S");
  REQUIRE_INPUT_ERROR(dinov2::image_view(cv::Mat(8, 8, CV_16SC1)), "CV_16S");
  const int sizes3[] = {4, 4, 4};
  REQUIRE_INPUT_ERROR(dinov2::image_view(cv::Mat(3, sizes3, CV_8UC1)), "3 dimensions");
  REQUIRE_INPUT_ERROR(dinov2::image_views({cv::Mat(8, 8, CV_8UC3), cv::Mat()}), "image 1");

  ImageView v;
  REQUIRE_INPUT_ERROR(pre(v), "empty");
  const std::vector<uint8_t> pixels(8 * 8 * 3);
  v.data = pixels.data();
  v.height = 8;
  v.width = 8;
  v.channels = 2;
  REQUIRE_INPUT_ERROR(pre(v), "2 channels");
  v.channels = 3;
  v.row_stride = 10;
  REQUIRE_INPUT_ERROR(pre(v), "row_stride");
  v.row_stride = 0;
  v.height = 0;
  REQUIRE_INPUT_ERROR(pre.resized(v), "0x8");
  REQUIRE_INPUT_ERROR(pre(std::vector<ImageView>{}), "no images");

  REQUIRE_INPUT_ERROR(pre(at::Tensor()), "undefined");
  REQUIRE_INPUT_ERROR(pre(at::zeros({10}, at::kByte)), "1 dimensions");
  REQUIRE_INPUT_ERROR(pre(at::zeros({1, 2, 8, 8, 3}, at::kByte)), "5 dimensions");
  REQUIRE_INPUT_ERROR(pre(at::zeros({8, 8, 2}, at::kByte)), "neither");
  REQUIRE_INPUT_ERROR(pre(at::zeros({8, 8, 2}, at::kByte), TensorLayout::kHWC), "2 channels");
  REQUIRE_INPUT_ERROR(pre(at::zeros({5, 8, 8}, at::kByte), TensorLayout::kCHW), "5 channels");
  REQUIRE_INPUT_ERROR(pre(at::zeros({3, 8, 4}, at::kByte)), "TensorLayout::kHWC");
  REQUIRE_INPUT_ERROR(pre(at::zeros({8, 8, 3}, at::kInt)), "dtype Int");
  REQUIRE_INPUT_ERROR(pre(at::zeros({8, 8, 3}, at::kBool)), "dtype Bool");
  REQUIRE_INPUT_ERROR(pre(at::zeros({0, 8, 3}, at::kByte)), "empty");
  REQUIRE_INPUT_ERROR(pre(at::zeros({0, 8, 8, 3}, at::kByte)), "no images");
  REQUIRE_INPUT_ERROR(pre(std::vector<at::Tensor>{at::zeros({8, 8, 3}, at::kByte), at::Tensor()}),
                      "image tensor 1");
  REQUIRE_INPUT_ERROR(dinov2::to_bgr_mat(at::zeros({8, 8}, at::kByte)), "[H, W, 3]");
}

TEST_CASE("bad recipes and statistics throw InputError naming the value and the fix",
          "[preprocess][errors]") {
  REQUIRE_INPUT_ERROR(Recipe::square(500), "500");
  REQUIRE_INPUT_ERROR(Recipe::square(500), "490 or 504");
  REQUIRE_INPUT_ERROR(Recipe::square(0), "positive multiple of 14");
  REQUIRE_INPUT_ERROR(Recipe::square(-14), "-14");
  REQUIRE_INPUT_ERROR(Recipe::resize(224, 100), "the width is 100");
  REQUIRE_INPUT_ERROR(Recipe::resize(13, 224), "the height is 13");
  REQUIRE_INPUT_ERROR(Recipe::eval_center_crop(256, 230), "the crop size is 230");
  REQUIRE_INPUT_ERROR(Recipe::eval_center_crop(200, 224), "at least 224");
  REQUIRE_INPUT_ERROR(Recipe::patch_aligned(0), "max_side is 0");
  REQUIRE_INPUT_ERROR(Recipe::patch_aligned(518, 0), "max_tokens is 0");
  REQUIRE_INPUT_ERROR(Recipe::parse("bogus(3)"), "bogus(3)");
  REQUIRE_INPUT_ERROR(Recipe::parse("square(5x)"), "square(5x)");
  REQUIRE_INPUT_ERROR(Recipe::parse("resize(224)"), "resize(224)");
  REQUIRE_INPUT_ERROR(Recipe::parse("square(99999999999)"), "square(99999999999)");
  REQUIRE_INPUT_ERROR(Recipe::square().plan(0, 10), "0x10");
  REQUIRE_INPUT_ERROR(Normalization::from({0.5, 0.5}, {1, 1, 1}), "got 2 and 3");
  REQUIRE_INPUT_ERROR(Normalization::from({0.5, 0.5, 0.5}, {1, 0, 1}), "std 0");
  Normalization n;
  n.stddev[2] = -1.0f;
  REQUIRE_INPUT_ERROR(Preprocessor(Recipe::square(), n), "std -1");
}

TEST_CASE("load_image throws InputError naming a missing or undecodable file",
          "[preprocess][errors][opencv]") {
  REQUIRE_INPUT_ERROR(dinov2::load_image("/nonexistent/cat.jpg"), "'/nonexistent/cat.jpg'");
  REQUIRE_INPUT_ERROR(dinov2::load_image("/nonexistent/cat.jpg"), "no such file");
  const auto junk = std::filesystem::temp_directory_path() / "dinov2_test_not_an_image.jpg";
  std::ofstream(junk) << "this is not a JPEG file";
  REQUIRE_INPUT_ERROR(dinov2::load_image(junk.string()), "not an image in a supported format");
  std::filesystem::remove(junk);
  REQUIRE_INPUT_ERROR(dinov2::load_image(std::filesystem::temp_directory_path().string()),
                      "is a folder");
  const cv::Mat ok = photo("camera.png");
  CHECK(ok.type() == CV_8UC3);
  CHECK(ok.rows == 512);
}

// -----------------------------------------------------------------------------------------------
// Timing (hidden: run with `dinov2_tests "[.timing]" -s`)

TEST_CASE("timing of a 1920x1080 image to 518x518", "[.timing]") {
  cv::Mat image(1080, 1920, CV_8UC3);
  cv::randu(image, 0, 256);
  const auto view = dinov2::image_view(image);
  // Median wall time and median process CPU time of 25 runs, in milliseconds. On a loaded
  // machine the CPU time of a single-threaded run is the steadier measure.
  auto measure = [&](auto&& f) {
    std::vector<double> wall;
    std::vector<double> cpu;
    for (int i = 0; i < 25; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      const std::clock_t c0 = std::clock();
      f();
      cpu.push_back(1000.0 * static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC);
      wall.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(wall.begin(), wall.end());
    std::sort(cpu.begin(), cpu.end());
    return std::make_pair(wall[wall.size() / 2], cpu[cpu.size() / 2]);
  };
  const int threads = at::get_num_threads();
  for (const Recipe& recipe : {Recipe::square(518), Recipe::eval_center_crop()}) {
    const Preprocessor pre(recipe);
    for (int n : {1, threads}) {
      at::set_num_threads(n);
      const auto resize = measure([&] { (void)pre.resized(view); });
      const auto full = measure([&] { (void)pre(view); });
      std::printf(
          "%s, %d thread(s): resize %.2f ms wall (%.2f ms CPU); resize + normalise + batch "
          "%.2f ms wall (%.2f ms CPU)\n",
          recipe.to_string().c_str(), n, resize.first, resize.second, full.first, full.second);
    }
  }
  at::set_num_threads(threads);
  SUCCEED();
}
