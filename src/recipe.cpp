// SPDX-License-Identifier: Apache-2.0
// Recipes (how an image of any size becomes a patch-aligned model input) and normalisation
// values. docs/PREPROCESSING.md states the geometry implemented here.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <string>

#include "detail/text.hpp"
#include "dinov2/error.hpp"
#include "dinov2/preprocess.hpp"

namespace dinov2 {

namespace {

using detail::bad_argument;

// ---------------------------------------------------------------------------------------------
// Argument checks

std::string nearest_multiples(int value) {
  const int below = std::max(1, value / kPatchSize) * kPatchSize;
  const int above = (std::max(0, value) / kPatchSize + 1) * kPatchSize;
  return below == above || below > value ? fmt::format("{}", above)
                                         : fmt::format("{} or {}", below, above);
}

void check_multiple_of_patch(const char* call, const char* what, int value) {
  if (value <= 0 || value % kPatchSize != 0) {
    bad_argument(fmt::format(
        "dinov2: {}: {} is {}; it must be a positive multiple of {} (the patch size), e.g. {}",
        call, what, value, kPatchSize, nearest_multiples(value)));
  }
}

// Python's round() for a half-integer d / 2 (d >= 0): ties go to the even neighbour, as
// torchvision's centre crop computes int(round((side - crop) / 2.0)).
int64_t half_round_even(int64_t d) {
  int64_t half = d / 2;
  if (d % 2 != 0 && half % 2 != 0) ++half;
  return half;
}

}  // namespace

// -----------------------------------------------------------------------------------------------
// Recipe

Recipe Recipe::square(int size) {
  check_multiple_of_patch(fmt::format("Recipe::square({})", size).c_str(), "the size", size);
  return Recipe(Kind::kSquare, size, size, 0);
}

Recipe Recipe::eval_center_crop(int resize, int crop) {
  const std::string call = fmt::format("Recipe::eval_center_crop({}, {})", resize, crop);
  check_multiple_of_patch(call.c_str(), "the crop size", crop);
  if (resize < crop) {
    bad_argument(fmt::format(
        "dinov2: {}: the shorter side is resized to {}, less than the crop size {}; use a resize "
        "size of at least {} (the official ratio is 256/224)",
        call, resize, crop, crop));
  }
  return Recipe(Kind::kEvalCenterCrop, resize, crop, 0);
}

Recipe Recipe::patch_aligned(int max_side, int64_t max_tokens) {
  const std::string call = fmt::format("Recipe::patch_aligned({}, {})", max_side, max_tokens);
  if (max_side <= 0) {
    bad_argument(
        fmt::format("dinov2: {}: max_side is {}; it must be positive (e.g. 518)", call, max_side));
  }
  if (max_tokens <= 0) {
    bad_argument(fmt::format("dinov2: {}: max_tokens is {}; it must be positive (e.g. 16384)", call,
                             max_tokens));
  }
  return Recipe(Kind::kPatchAligned, max_side, 0, max_tokens);
}

Recipe Recipe::resize(int height, int width) {
  const std::string call = fmt::format("Recipe::resize({}, {})", height, width);
  check_multiple_of_patch(call.c_str(), "the height", height);
  check_multiple_of_patch(call.c_str(), "the width", width);
  return Recipe(Kind::kResize, height, width, 0);
}

Recipe Recipe::parse(const std::string& input) {
  std::string s;
  for (char ch : input) {
    if (!std::isspace(static_cast<unsigned char>(ch))) s += ch;
  }
  const auto fail = [&input]() {
    bad_argument(
        fmt::format("dinov2: cannot read the recipe \"{}\"; expected square(SIZE), "
                    "eval_center_crop(RESIZE,CROP), patch_aligned(MAX_SIDE,MAX_TOKENS) or "
                    "resize(HEIGHT,WIDTH), or a bare name for the defaults",
                    input));
  };
  std::string name = s;
  std::vector<int64_t> args;
  const auto open = s.find('(');
  if (open != std::string::npos) {
    if (s.back() != ')') fail();
    name = s.substr(0, open);
    const std::string inner = s.substr(open + 1, s.size() - open - 2);
    std::size_t pos = 0;
    while (pos <= inner.size()) {
      const auto comma = std::min(inner.find(',', pos), inner.size());
      const std::string item = inner.substr(pos, comma - pos);
      if (item.empty() || item.size() > 18) fail();
      for (std::size_t i = 0; i < item.size(); ++i) {
        if (!std::isdigit(static_cast<unsigned char>(item[i])) && !(i == 0 && item[i] == '-')) {
          fail();
        }
      }
      if (item == "-") fail();
      args.push_back(std::stoll(item));
      pos = comma + 1;
    }
  }
  const auto as_int = [&](int64_t v) {
    if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max()) fail();
    return static_cast<int>(v);
  };
  if (name == "square" && args.size() <= 1) {
    return args.empty() ? square() : square(as_int(args[0]));
  }
  if (name == "eval_center_crop" && (args.empty() || args.size() == 2)) {
    return args.empty() ? eval_center_crop() : eval_center_crop(as_int(args[0]), as_int(args[1]));
  }
  if (name == "patch_aligned" && args.size() <= 2) {
    if (args.empty()) return patch_aligned();
    return args.size() == 1 ? patch_aligned(as_int(args[0]))
                            : patch_aligned(as_int(args[0]), args[1]);
  }
  if (name == "resize" && args.size() == 2) return resize(as_int(args[0]), as_int(args[1]));
  fail();
  return square();  // not reached
}

std::string Recipe::to_string() const {
  switch (kind_) {
    case Kind::kSquare:
      return fmt::format("square({})", a_);
    case Kind::kEvalCenterCrop:
      return fmt::format("eval_center_crop({},{})", a_, b_);
    case Kind::kPatchAligned:
      return fmt::format("patch_aligned({},{})", a_, max_tokens_);
    case Kind::kResize:
      return fmt::format("resize({},{})", a_, b_);
  }
  return "unknown";
}

int64_t Recipe::token_bound() const {
  switch (kind_) {
    case Kind::kEvalCenterCrop:
      return int64_t{b_ / kPatchSize} * (b_ / kPatchSize);
    case Kind::kPatchAligned: {
      const int64_t side = std::max<int64_t>(1, (a_ + kPatchSize / 2) / kPatchSize);
      // The longer side gets `side` patches, the shorter one at most as many.
      return std::min(max_tokens_, side * side);
    }
    default:
      return int64_t{a_ / kPatchSize} * (b_ / kPatchSize);
  }
}

ResizePlan Recipe::plan(int64_t height, int64_t width) const {
  if (height <= 0 || width <= 0) {
    throw InputError(fmt::format(
        "dinov2: cannot plan {} for an image of {}x{} pixels; both sides must be positive",
        to_string(), height, width));
  }
  ResizePlan p;
  int64_t out_h = 0;
  int64_t out_w = 0;
  switch (kind_) {
    case Kind::kSquare:
    case Kind::kResize:
      p.resized_height = out_h = a_;
      p.resized_width = out_w = b_;
      break;
    case Kind::kEvalCenterCrop: {
      // torchvision Resize(int): short side -> a_, long side -> int(a_ * long / short).
      const int64_t short_side = std::min(height, width);
      const int64_t long_side = std::max(height, width);
      const auto new_long = static_cast<int64_t>(static_cast<double>(a_ * long_side) /
                                                 static_cast<double>(short_side));
      p.resized_height = height <= width ? a_ : new_long;
      p.resized_width = height <= width ? new_long : a_;
      out_h = out_w = b_;
      p.crop_top = half_round_even(p.resized_height - b_);
      p.crop_left = half_round_even(p.resized_width - b_);
      break;
    }
    case Kind::kPatchAligned: {
      const double scale = static_cast<double>(a_) / static_cast<double>(std::max(height, width));
      const double rows_exact = static_cast<double>(height) * scale / kPatchSize;
      const double cols_exact = static_cast<double>(width) * scale / kPatchSize;
      int64_t rows = std::max<int64_t>(1, static_cast<int64_t>(std::floor(rows_exact + 0.5)));
      int64_t cols = std::max<int64_t>(1, static_cast<int64_t>(std::floor(cols_exact + 0.5)));
      if (rows * cols > max_tokens_) {
        const double shrink =
            std::sqrt(static_cast<double>(max_tokens_) / (rows_exact * cols_exact));
        rows = std::max<int64_t>(1, static_cast<int64_t>(std::floor(rows_exact * shrink)));
        cols = std::max<int64_t>(1, static_cast<int64_t>(std::floor(cols_exact * shrink)));
        // Only when one side was raised to 1 can the product still be too large.
        if (rows * cols > max_tokens_) {
          if (rows == 1) {
            cols = max_tokens_;
          } else {
            rows = max_tokens_ / cols;
          }
        }
      }
      p.resized_height = out_h = rows * kPatchSize;
      p.resized_width = out_w = cols * kPatchSize;
      break;
    }
  }
  if (p.resized_height * p.resized_width > kMaxResizedPixels) {
    throw InputError::too_many_tokens(fmt::format(
        "dinov2: {} resizes an image of {}x{} pixels to {}x{}, over the limit of "
        "{} pixels (kMaxResizedPixels); crop the image or use another recipe",
        to_string(), height, width, p.resized_height, p.resized_width, kMaxResizedPixels));
  }
  PatchGrid& g = p.grid;
  g.rows = out_h / kPatchSize;
  g.cols = out_w / kPatchSize;
  g.patch_size = kPatchSize;
  g.original_height = height;
  g.original_width = width;
  // Output pixel i of the resized image covers input [i, i + 1) * (input / resized).
  const double sy = static_cast<double>(height) / static_cast<double>(p.resized_height);
  const double sx = static_cast<double>(width) / static_cast<double>(p.resized_width);
  g.crop_y = static_cast<double>(p.crop_top) * sy;
  g.crop_x = static_cast<double>(p.crop_left) * sx;
  g.crop_height = static_cast<double>(out_h) * sy;
  g.crop_width = static_cast<double>(out_w) * sx;
  return p;
}

// -----------------------------------------------------------------------------------------------
// Normalization

Normalization Normalization::from(const std::vector<double>& mean,
                                  const std::vector<double>& stddev) {
  if (mean.size() != 3 || stddev.size() != 3) {
    bad_argument(fmt::format(
        "dinov2: normalisation needs 3 means and 3 standard deviations (R, G, B); got {} and {}",
        mean.size(), stddev.size()));
  }
  Normalization n;
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(mean[c]) || !std::isfinite(stddev[c]) || stddev[c] <= 0.0) {
      bad_argument(fmt::format(
          "dinov2: normalisation channel {} has mean {} and std {}; both must be finite and the "
          "std positive",
          c, mean[c], stddev[c]));
    }
    n.mean[c] = static_cast<float>(mean[c]);
    n.stddev[c] = static_cast<float>(stddev[c]);
  }
  return n;
}

}  // namespace dinov2
