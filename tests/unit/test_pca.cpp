// SPDX-License-Identifier: Apache-2.0
// PCA of patch features against NumPy (tests/refgen/analysis_refs.py: np.linalg.eigh on the
// float64 covariance of the same float32 features, the documented sign, colour and mask rules).
//
// Tolerances. The library accumulates the covariance in float64 and stores the basis in float32,
// so components agree to float32 rounding scaled by the eigenvalue gaps (about 1 here): 1e-6
// (measured 1.4e-8). Colours come from float32 projections (values and ranges of order 10):
// 1e-5 in [0, 1] (measured 1.7e-7). The masks must be equal: the generated foreground lies far
// from the threshold.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <limits>

#include "dinov2/error.hpp"
#include "dinov2/opencv.hpp"
#include "dinov2/pca.hpp"
#include "support.hpp"

using dinov2::test::data_path;
using dinov2::test::max_abs_diff;

namespace {

constexpr double kBasisTol = 1e-6;
constexpr double kColorTol = 1e-5;

const at::Tensor& reference(const std::string& name) {
  static const auto r = dinov2::test::load_tensors(data_path("analysis_refs.pt"));
  const auto it = r.find(name);
  if (it == r.end()) throw std::runtime_error("no reference tensor " + name);
  return it->second;
}

std::vector<at::Tensor> feature_maps() {
  return {reference("pca/features0"), reference("pca/features1"), reference("pca/features2")};
}

}  // namespace

TEST_CASE("PatchPca::fit matches NumPy's eigh of the covariance", "[pca][parity]") {
  const auto pca = dinov2::PatchPca::fit(feature_maps(), 3);
  CHECK(pca.samples() == 6 * 8 + 7 * 7 + 5 * 9);
  CHECK(pca.dim() == 48);
  CHECK(max_abs_diff(pca.mean(), reference("pca/mean")) < kBasisTol);
  CHECK(max_abs_diff(pca.basis(), reference("pca/basis")) < kBasisTol);
  const double rel = ((pca.variance().to(at::kDouble) - reference("pca/variance")).abs() /
                      reference("pca/variance"))
                         .max()
                         .item<double>();
  CHECK(rel < 1e-6);
}

TEST_CASE("PatchPca components are orthonormal and agree with NumPy up to sign", "[pca][parity]") {
  // The sign rule is a convention; this checks the subspace itself whatever the sign.
  const auto pca = dinov2::PatchPca::fit(at::cat({reference("pca/features0").reshape({-1, 48}),
                                                  reference("pca/features1").reshape({-1, 48}),
                                                  reference("pca/features2").reshape({-1, 48})}),
                                         3);
  const at::Tensor b = pca.basis().to(at::kDouble);
  CHECK(max_abs_diff(at::matmul(b, b.t()), at::eye(3, at::kDouble)) < 1e-6);
  const at::Tensor dots = (b * reference("pca/basis")).sum(1).abs();
  CHECK(max_abs_diff(dots, at::ones({3}, at::kDouble)) < 1e-6);
  // The documented sign: the largest-magnitude entry of each component is positive.
  for (int64_t c = 0; c < 3; ++c) {
    const int64_t top = b[c].abs().argmax().item<int64_t>();
    CHECK(b[c][top].item<double>() > 0);
  }
}

TEST_CASE("PatchPca::project centres and rotates", "[pca]") {
  const auto pca = dinov2::PatchPca::fit(feature_maps(), 2);
  const at::Tensor x = pca.mean() + 2.0 * pca.basis()[1] - 0.5 * pca.basis()[0];
  const at::Tensor p = pca.project(x.unsqueeze(0));
  REQUIRE(p.sizes() == at::IntArrayRef({1, 2}));
  CHECK(std::abs(p[0][0].item<double>() + 0.5) < 1e-5);
  CHECK(std::abs(p[0][1].item<double>() - 2.0) < 1e-5);
  CHECK_THROWS_AS(pca.project(at::zeros({3, 47})), dinov2::InputError);
}

TEST_CASE("pca_colors scales each component over all images as NumPy's percentiles",
          "[pca][parity]") {
  for (int clip : {0, 1}) {
    dinov2::PcaOptions options;
    options.clip_percentile = clip;
    const auto out = dinov2::pca_colors(feature_maps(), options);
    REQUIRE(out.colors.size() == 3);
    CHECK(out.masks.empty());
    CHECK(max_abs_diff(out.ranges.to(at::kDouble),
                       reference("pca/ranges_clip" + std::to_string(clip))) <
          1e-4);  // values of order 10 in float32
    for (int i = 0; i < 3; ++i) {
      const auto& expected =
          reference("pca/colors_clip" + std::to_string(clip) + "_" + std::to_string(i));
      REQUIRE(out.colors[i].sizes() == expected.sizes());
      CHECK(max_abs_diff(out.colors[i], expected) < kColorTol);
    }
  }
}

TEST_CASE("pca_colors with a foreground mask matches the documented orientation and threshold",
          "[pca][parity]") {
  dinov2::PcaOptions options;
  options.foreground_mask = true;
  const auto out = dinov2::pca_colors(feature_maps(), options);
  REQUIRE(out.masks.size() == 3);
  for (int i = 0; i < 3; ++i) {
    const std::string s = std::to_string(i);
    CHECK(out.masks[i].equal(reference("pca/mask" + s)));
    CHECK(max_abs_diff(out.colors[i], reference("pca/masked_colors" + s)) < kColorTol);
  }
  CHECK(max_abs_diff(out.pca.basis(), reference("pca/masked_basis")) < kBasisTol);
}

TEST_CASE("pca_colors accepts one [B, h, w, D] tensor and 1 or 2 components", "[pca]") {
  const at::Tensor batch =
      at::stack({reference("pca/features0"), reference("pca/features0") * 0.5f});
  dinov2::PcaOptions grey;
  grey.components = 1;
  const auto g = dinov2::pca_colors({batch}, grey);
  REQUIRE(g.colors.size() == 2);
  REQUIRE(g.colors[0].sizes() == at::IntArrayRef({6, 8, 3}));
  CHECK(g.colors[0].select(2, 0).equal(g.colors[0].select(2, 2)));
  dinov2::PcaOptions two;
  two.components = 2;
  const auto t = dinov2::pca_colors({batch}, two);
  CHECK(t.colors[1].select(2, 2).abs().max().item<float>() == 0.0f);
}

TEST_CASE("PCA refuses bad inputs with dinov2 errors", "[pca][errors]") {
  using dinov2::InputError;
  CHECK_THROWS_AS(dinov2::PatchPca::fit(reference("pca/features0"), 0), InputError);
  CHECK_THROWS_AS(dinov2::PatchPca::fit(reference("pca/features0"), 49), InputError);
  CHECK_THROWS_AS(dinov2::PatchPca::fit(at::zeros({1, 4}), 1), InputError);
  CHECK_THROWS_AS(dinov2::PatchPca::fit({at::zeros({5, 4}), at::zeros({5, 3})}, 1), InputError);
  at::Tensor nan = at::zeros({5, 4});
  nan[2][1] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(dinov2::PatchPca::fit(nan, 1), InputError);
  CHECK_THROWS_AS(dinov2::PatchPca::fit(at::zeros({5, 4}, at::kLong), 1), InputError);
  dinov2::PcaOptions bad;
  bad.components = 4;
  CHECK_THROWS_AS(dinov2::pca_colors(feature_maps(), bad), InputError);
  CHECK_THROWS_AS(dinov2::pca_colors({}), InputError);
  CHECK_THROWS_AS(dinov2::pca_colors({at::zeros({4, 4})}), InputError);
  CHECK_THROWS_WITH(dinov2::pca_colors({at::zeros({2, 2, 8}), at::zeros({2, 2, 9})}),
                    dinov2::test::ContainsSubstring("dinov2: "));
}

TEST_CASE("upsample_map gives each pixel the patch under its centre", "[pca][image]") {
  const at::Tensor map = at::tensor({0.0f, 1.0f, 0.5f, 0.25f}).reshape({2, 2, 1});
  const at::Tensor big = dinov2::upsample_map(map, 4, 6);
  REQUIRE(big.sizes() == at::IntArrayRef({4, 6, 1}));
  REQUIRE(big.scalar_type() == at::kByte);
  // Rows 0-1 come from patch row 0, columns 0-2 from patch column 0 (0.5 * 255 rounds to 128).
  const at::Tensor expected =
      at::tensor({0,   0,   0,   255, 255, 255, 0,   0,   0,   255, 255, 255,
                  128, 128, 128, 64,  64,  64,  128, 128, 128, 64,  64,  64},
                 at::kByte)
          .reshape({4, 6, 1});
  CHECK(big.equal(expected));
  const at::Tensor flat = at::full({3, 5, 3}, 0.4f);
  const at::Tensor smooth = dinov2::upsample_map(flat, 30, 17, dinov2::Upsampling::kBilinear);
  CHECK(smooth.eq(102).all().item<bool>());
}

TEST_CASE("upsample_to_original covers the grid's crop box only", "[pca][image]") {
  dinov2::PatchGrid grid;
  grid.rows = 2;
  grid.cols = 2;
  grid.original_height = 10;
  grid.original_width = 20;
  grid.crop_x = 5;
  grid.crop_y = 0;
  grid.crop_width = 10;
  grid.crop_height = 10;
  const at::Tensor out = dinov2::upsample_to_original(at::ones({2, 2, 3}), grid);
  REQUIRE(out.sizes() == at::IntArrayRef({10, 20, 3}));
  CHECK(out.slice(1, 0, 5).eq(0).all().item<bool>());
  CHECK(out.slice(1, 5, 15).eq(255).all().item<bool>());
  CHECK(out.slice(1, 15, 20).eq(0).all().item<bool>());
}

TEST_CASE("contact_sheet lays images out in rows of one height", "[pca][image]") {
  const at::Tensor a = at::full({10, 20, 3}, 200, at::kByte);
  const at::Tensor b = at::full({5, 5}, 50, at::kByte);
  const at::Tensor sheet = dinov2::contact_sheet({{a, b}, {b}}, 8, 4);
  // Row 0: 16 + 4 + 8 = 28 wide; row 1: 8 wide; heights 8 + 4 + 8.
  REQUIRE(sheet.sizes() == at::IntArrayRef({20, 28, 3}));
  CHECK(sheet[0][0][0].item<int>() == 200);
  CHECK(sheet[0][17][0].item<int>() == 0);
  CHECK(sheet[0][20][1].item<int>() == 50);
  CHECK(sheet[12][0][2].item<int>() == 50);
  CHECK(sheet[12][10][0].item<int>() == 0);
  CHECK_THROWS_AS(dinov2::contact_sheet({{at::zeros({4, 4, 3})}}), dinov2::InputError);
}

TEST_CASE("contact_sheet keeps a very wide image within 8 row heights", "[pca][image]") {
  // A 1x3000 strip at row height 256 would be 768,000 pixels wide; it is fitted to 2048 x 1.
  const at::Tensor strip = at::full({1, 3000, 3}, 200, at::kByte);
  const at::Tensor sheet = dinov2::contact_sheet({{strip, strip}}, 256, 8);
  REQUIRE(sheet.sizes() == at::IntArrayRef({256, 2048 + 8 + 2048, 3}));
  CHECK(sheet[127][100][0].item<int>() == 200);  // the strip, 1 pixel high, centred vertically
  CHECK(sheet[0][100][0].item<int>() == 0);
}

TEST_CASE("save_png writes RGB that OpenCV reads back as BGR", "[pca][image]") {
  const std::string path = data_path("analysis_test_save.png");
  const at::Tensor rgb = at::randint(0, 256, {7, 9, 3}, at::kByte);
  dinov2::save_png(path, rgb);
  const cv::Mat bgr = dinov2::load_image(path);
  REQUIRE(bgr.rows == 7);
  REQUIRE(bgr.cols == 9);
  const at::Tensor back = at::from_blob(bgr.data, {7, 9, 3}, at::kByte).flip({2}).contiguous();
  CHECK(back.equal(rgb));
  std::remove(path.c_str());
  CHECK_THROWS_AS(dinov2::save_png(path, at::zeros({3, 3, 3})), dinov2::InputError);
  CHECK_THROWS_AS(dinov2::save_png("/nonexistent-dir/x.png", rgb), dinov2::InputError);
}
