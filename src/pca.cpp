// SPDX-License-Identifier: Apache-2.0
// PCA of patch features (Eigen, double precision) and the colour pictures made from it (ATen for
// the element-wise work, OpenCV for resizing and PNG encoding).
#include "dinov2/pca.hpp"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <utility>

#include "detail/boundary.hpp"
#include "dinov2/error.hpp"
#include "dinov2/io.hpp"

namespace dinov2 {

namespace {

using detail::guarded;
using detail::shape_of;

using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MapD = Eigen::Map<const MatrixD>;

/// The rows of a [..., D] floating tensor as a contiguous [N, D] float64 CPU tensor.
at::Tensor as_rows(const at::Tensor& t, const char* what) {
  if (!t.defined() || t.dim() < 1 || !at::isFloatingType(t.scalar_type())) {
    throw InputError(
        std::string("dinov2: ") + what + " must be a floating tensor [..., D]; got " + shape_of(t) +
        (t.defined() ? std::string(" of dtype ") + c10::toString(t.scalar_type()) : std::string()));
  }
  return t.detach().to(at::kCPU, at::kDouble).reshape({-1, t.size(-1)}).contiguous();
}

/// The q-th percentile of the values, NumPy's default (linear interpolation between the two
/// nearest ranks).
double percentile(const at::Tensor& sorted, double q) {
  const int64_t n = sorted.numel();
  const double pos = q / 100.0 * static_cast<double>(n - 1);
  const auto lo = static_cast<int64_t>(std::floor(pos));
  const int64_t hi = std::min(lo + 1, n - 1);
  const double* v = sorted.data_ptr<double>();
  return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

/// [h, w, D] patch maps, one per image, on the CPU as float32.
std::vector<at::Tensor> image_maps(const std::vector<at::Tensor>& patches) {
  std::vector<at::Tensor> maps;
  if (patches.size() == 1 && patches[0].defined() && patches[0].dim() == 4) {
    for (const auto& m : patches[0].unbind(0)) maps.push_back(m);
  } else {
    maps = patches;
  }
  if (maps.empty()) throw InputError("dinov2: pca_colors needs at least one patch map; got none");
  for (size_t i = 0; i < maps.size(); ++i) {
    const at::Tensor& m = maps[i];
    if (!m.defined() || m.dim() != 3 || !at::isFloatingType(m.scalar_type()) || m.size(0) < 1 ||
        m.size(1) < 1) {
      throw InputError("dinov2: pca_colors: patch map " + std::to_string(i) +
                       " must be a floating [h, w, D] tensor (Features::patches[b]); got " +
                       shape_of(m));
    }
    if (m.size(2) != maps[0].size(2)) {
      throw InputError("dinov2: pca_colors: patch map " + std::to_string(i) +
                       " has width D = " + std::to_string(m.size(2)) + " but the first has " +
                       std::to_string(maps[0].size(2)) + "; fit images of one model together");
    }
  }
  std::vector<at::Tensor> out;
  for (const auto& m : maps) out.push_back(m.detach().to(at::kCPU, at::kFloat).contiguous());
  return out;
}

/// A CPU uint8 tensor [H, W, C] (C = 1 or 3) viewed as a cv::Mat (no copy).
cv::Mat mat_view(const at::Tensor& t) {
  return cv::Mat(static_cast<int>(t.size(0)), static_cast<int>(t.size(1)),
                 CV_MAKETYPE(CV_8U, static_cast<int>(t.size(2))), t.data_ptr());
}

/// A copy of a cv::Mat of 8-bit pixels as a [H, W, C] uint8 tensor.
at::Tensor tensor_copy(const cv::Mat& m) {
  cv::Mat c = m.isContinuous() ? m : m.clone();
  return at::from_blob(c.data, {c.rows, c.cols, c.channels()}, at::kByte).clone();
}

void check_map(const at::Tensor& colors, const char* what) {
  if (!colors.defined() || colors.dim() != 3 || (colors.size(2) != 1 && colors.size(2) != 3) ||
      (colors.scalar_type() != at::kByte && !at::isFloatingType(colors.scalar_type())) ||
      colors.size(0) < 1 || colors.size(1) < 1) {
    throw InputError(std::string("dinov2: ") + what +
                     " needs an [h, w, 1] or [h, w, 3] float (in [0, 1]) or uint8 map; got " +
                     shape_of(colors));
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// PatchPca

PatchPca PatchPca::fit(const at::Tensor& samples, int64_t components) {
  return fit(std::vector<at::Tensor>{samples}, components);
}

PatchPca PatchPca::fit(const std::vector<at::Tensor>& samples, int64_t components) {
  return guarded("PatchPca::fit", [&] {
    std::vector<at::Tensor> rows;
    int64_t n = 0;
    for (const auto& s : samples) {
      rows.push_back(as_rows(s, "PatchPca::fit: each sample tensor"));
      if (rows.back().size(1) != rows.front().size(1)) {
        throw InputError("dinov2: PatchPca::fit: the sample tensors differ in width D (" +
                         std::to_string(rows.front().size(1)) + " and " +
                         std::to_string(rows.back().size(1)) + ")");
      }
      n += rows.back().size(0);
    }
    const int64_t d = rows.empty() ? 0 : rows.front().size(1);
    if (n < 2 || d < 1) {
      throw InputError("dinov2: PatchPca::fit needs at least 2 samples of width >= 1; got " +
                       std::to_string(n) + " of width " + std::to_string(d));
    }
    if (components < 1 || components > d) {
      throw InputError::invalid_argument(
          "dinov2: PatchPca::fit: components = " + std::to_string(components) + " must be in [1, " +
          std::to_string(d) + "] (the feature width)");
    }
    Eigen::VectorXd sum = Eigen::VectorXd::Zero(d);
    for (const auto& r : rows) {
      if (!at::isfinite(r).all().item<bool>()) {
        throw InputError("dinov2: PatchPca::fit: the samples contain NaN or infinite values");
      }
      sum += MapD(r.data_ptr<double>(), r.size(0), d).colwise().sum().transpose();
    }
    const Eigen::RowVectorXd mean = (sum / static_cast<double>(n)).transpose();
    // Centre first (two passes) so that the covariance does not suffer from cancellation.
    Eigen::MatrixXd cov = Eigen::MatrixXd::Zero(d, d);
    for (const auto& r : rows) {
      const MatrixD centred = MapD(r.data_ptr<double>(), r.size(0), d).rowwise() - mean;
      cov.selfadjointView<Eigen::Lower>().rankUpdate(centred.transpose());
    }
    cov = cov.selfadjointView<Eigen::Lower>();
    cov /= static_cast<double>(n - 1);
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(cov);
    if (solver.info() != Eigen::Success) {
      throw RuntimeError("dinov2: PatchPca::fit: the eigen decomposition of the covariance failed");
    }
    PatchPca pca;
    pca.samples_ = n;
    pca.mean_ = at::empty({d}, at::kFloat);
    pca.basis_ = at::empty({components, d}, at::kFloat);
    pca.variance_ = at::empty({components}, at::kFloat);
    float* m = pca.mean_.data_ptr<float>();
    float* b = pca.basis_.data_ptr<float>();
    float* v = pca.variance_.data_ptr<float>();
    for (int64_t j = 0; j < d; ++j) m[j] = static_cast<float>(mean(j));
    for (int64_t c = 0; c < components; ++c) {
      // Eigenvalues come in increasing order: component c is column d - 1 - c.
      const int64_t col = d - 1 - c;
      Eigen::VectorXd u = solver.eigenvectors().col(col);
      Eigen::Index top = 0;
      u.cwiseAbs().maxCoeff(&top);
      if (u(top) < 0) u = -u;
      for (int64_t j = 0; j < d; ++j) b[c * d + j] = static_cast<float>(u(j));
      v[c] = static_cast<float>(std::max(0.0, solver.eigenvalues()(col)));
    }
    return pca;
  });
}

at::Tensor PatchPca::project(const at::Tensor& x) const {
  if (!x.defined() || x.dim() < 1 || x.size(-1) != dim() || !at::isFloatingType(x.scalar_type())) {
    throw InputError("dinov2: PatchPca::project needs a floating [..., " + std::to_string(dim()) +
                     "] tensor (the width the PCA was fitted on); got " + shape_of(x));
  }
  return guarded("PatchPca::project", [&] {
    const at::Tensor xf = x.detach().to(at::kFloat);
    return at::matmul(xf - mean_.to(xf.device()), basis_.to(xf.device()).t());
  });
}

// ---------------------------------------------------------------------------------------------
// The colour picture

std::vector<int64_t> border_patches(int64_t rows, int64_t cols) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      if (i == 0 || j == 0 || i == rows - 1 || j == cols - 1) out.push_back(i * cols + j);
    }
  }
  return out;
}

PcaColors pca_colors(const std::vector<at::Tensor>& patches, const PcaOptions& options) {
  if (options.components < 1 || options.components > 3) {
    throw InputError::invalid_argument(
        "dinov2: PcaOptions::components = " + std::to_string(options.components) +
        " must be 1, 2 or 3 (one per colour channel)");
  }
  if (!(options.clip_percentile >= 0.0 && options.clip_percentile < 50.0)) {
    throw InputError::invalid_argument(
        "dinov2: PcaOptions::clip_percentile = " + std::to_string(options.clip_percentile) +
        " must be in [0, 50)");
  }
  if (!(options.mask_threshold >= 0.0 && options.mask_threshold < 1.0)) {
    throw InputError::invalid_argument(
        "dinov2: PcaOptions::mask_threshold = " + std::to_string(options.mask_threshold) +
        " must be in [0, 1)");
  }
  const std::vector<at::Tensor> maps = image_maps(patches);
  return guarded("pca_colors", [&] {
    const int64_t d = maps[0].size(2);
    PcaColors out;

    // Foreground: the first component over all patches, oriented and min-max scaled jointly.
    std::vector<at::Tensor> fit_rows;
    if (options.foreground_mask) {
      const PatchPca first = PatchPca::fit(maps, 1);
      std::vector<at::Tensor> scores;
      double border_sum = 0, inner_sum = 0;
      int64_t border_n = 0, inner_n = 0;
      for (const auto& m : maps) {
        const at::Tensor s = first.project(m).reshape({-1}).to(at::kDouble);
        const auto border = border_patches(m.size(0), m.size(1));
        const at::Tensor is_border = at::zeros({s.numel()}, at::kBool);
        is_border.index_fill_(0, at::tensor(border, at::kLong), true);
        border_sum += s.masked_select(is_border).sum().item<double>();
        inner_sum += s.masked_select(is_border.logical_not()).sum().item<double>();
        border_n += static_cast<int64_t>(border.size());
        inner_n += s.numel() - static_cast<int64_t>(border.size());
        scores.push_back(s);
      }
      const bool flip =
          border_n > 0 && inner_n > 0 &&
          border_sum / static_cast<double>(border_n) > inner_sum / static_cast<double>(inner_n);
      const at::Tensor all = at::cat(scores) * (flip ? -1.0 : 1.0);
      const double lo = all.min().item<double>();
      const double hi = all.max().item<double>();
      for (size_t i = 0; i < maps.size(); ++i) {
        const at::Tensor s = scores[i] * (flip ? -1.0 : 1.0);
        const at::Tensor scaled = hi > lo ? (s - lo) / (hi - lo) : at::zeros_like(s);
        const at::Tensor mask = scaled.gt(options.mask_threshold);
        out.masks.push_back(mask.reshape({maps[i].size(0), maps[i].size(1)}));
        fit_rows.push_back(maps[i].reshape({-1, d}).index_select(0, mask.nonzero().squeeze(1)));
      }
    } else {
      for (const auto& m : maps) fit_rows.push_back(m.reshape({-1, d}));
    }
    int64_t coloured = 0;
    for (const auto& r : fit_rows) coloured += r.size(0);
    if (coloured < options.components + 1) {
      throw InputError("dinov2: pca_colors: " + std::to_string(coloured) +
                       " patches to colour, fewer than components + 1 = " +
                       std::to_string(options.components + 1) +
                       (options.foreground_mask
                            ? "; lower PcaOptions::mask_threshold or give more images"
                            : "; give larger images or more of them"));
    }
    out.pca = PatchPca::fit(fit_rows, options.components);

    // Colour ranges from the coloured patches only, jointly over the images.
    std::vector<at::Tensor> projected;
    for (const auto& r : fit_rows) projected.push_back(out.pca.project(r));
    const at::Tensor values = at::cat(projected).to(at::kDouble);
    out.ranges = at::empty({options.components, 2}, at::kFloat);
    std::vector<std::pair<double, double>> ranges;
    for (int64_t c = 0; c < options.components; ++c) {
      const at::Tensor sorted = std::get<0>(values.select(1, c).sort()).contiguous();
      const double lo = percentile(sorted, options.clip_percentile);
      const double hi = percentile(sorted, 100.0 - options.clip_percentile);
      ranges.emplace_back(lo, hi);
      out.ranges[c][0] = lo;
      out.ranges[c][1] = hi;
    }

    for (size_t i = 0; i < maps.size(); ++i) {
      const int64_t h = maps[i].size(0), w = maps[i].size(1);
      const at::Tensor p = out.pca.project(maps[i]).to(at::kDouble);  // [h, w, k]
      at::Tensor rgb = at::zeros({h, w, 3}, at::kDouble);
      for (int64_t c = 0; c < options.components; ++c) {
        const auto [lo, hi] = ranges[static_cast<size_t>(c)];
        const at::Tensor ch = hi > lo ? ((p.select(2, c) - lo) / (hi - lo)).clamp(0.0, 1.0)
                                      : at::zeros({h, w}, at::kDouble);
        rgb.select(2, c).copy_(ch);
      }
      if (options.components == 1) rgb = rgb.select(2, 0).unsqueeze(2).expand({h, w, 3});
      if (options.foreground_mask) rgb = rgb * out.masks[i].unsqueeze(2).to(at::kDouble);
      out.colors.push_back(rgb.to(at::kFloat).contiguous());
    }
    return out;
  });
}

// ---------------------------------------------------------------------------------------------
// Images

at::Tensor upsample_map(const at::Tensor& colors, int64_t height, int64_t width, Upsampling mode) {
  check_map(colors, "upsample_map");
  if (height < 1 || width < 1) {
    throw InputError::invalid_argument("dinov2: upsample_map: the size " + std::to_string(height) +
                                       "x" + std::to_string(width) + " must be positive");
  }
  return guarded("upsample_map", [&] {
    const at::Tensor src = colors.detach().cpu();
    const int64_t h = src.size(0), w = src.size(1);
    if (mode == Upsampling::kNearest) {
      // Pixel y takes the patch whose span contains its centre: floor((y + 0.5) * h / height).
      auto index = [](int64_t out, int64_t in) {
        return ((at::arange(out, at::kDouble) + 0.5) * (static_cast<double>(in) / out))
            .floor()
            .clamp_max(in - 1)
            .to(at::kLong);
      };
      at::Tensor big = src.index_select(0, index(height, h)).index_select(1, index(width, w));
      if (big.scalar_type() != at::kByte) {
        big = (big.to(at::kFloat).clamp(0.0, 1.0) * 255.0f).round().to(at::kByte);
      }
      return big.contiguous();
    }
    at::Tensor u8;
    cv::Mat dst;
    if (src.scalar_type() == at::kByte) {
      u8 = src.contiguous();
      cv::resize(mat_view(u8), dst, cv::Size(static_cast<int>(width), static_cast<int>(height)), 0,
                 0, cv::INTER_LINEAR);
    } else {
      const at::Tensor f = src.to(at::kFloat).clamp(0.0, 1.0).contiguous();
      cv::Mat fm(static_cast<int>(h), static_cast<int>(w), CV_MAKETYPE(CV_32F, f.size(2)),
                 f.data_ptr());
      cv::Mat big;
      cv::resize(fm, big, cv::Size(static_cast<int>(width), static_cast<int>(height)), 0, 0,
                 cv::INTER_LINEAR);
      big.convertTo(dst, CV_MAKETYPE(CV_8U, f.size(2)), 255.0);  // rounds and saturates
    }
    return tensor_copy(dst);
  });
}

at::Tensor upsample_to_original(const at::Tensor& colors, const PatchGrid& grid, Upsampling mode) {
  check_map(colors, "upsample_to_original");
  if (grid.original_height < 1 || grid.original_width < 1) {
    throw InputError::invalid_argument(
        "dinov2: upsample_to_original: the grid has no original size (" +
        std::to_string(grid.original_height) + "x" + std::to_string(grid.original_width) + ")");
  }
  const int64_t x0 = std::llround(grid.crop_x), y0 = std::llround(grid.crop_y);
  const int64_t x1 = std::llround(grid.crop_x + grid.crop_width);
  const int64_t y1 = std::llround(grid.crop_y + grid.crop_height);
  at::Tensor canvas =
      at::zeros({grid.original_height, grid.original_width, colors.size(2)}, at::kByte);
  if (x1 <= x0 || y1 <= y0) return canvas;
  const at::Tensor region = upsample_map(colors, y1 - y0, x1 - x0, mode);
  // Clip the crop box to the image (it lies inside for every recipe, but stay safe).
  const int64_t cx0 = std::max<int64_t>(x0, 0), cy0 = std::max<int64_t>(y0, 0);
  const int64_t cx1 = std::min(x1, grid.original_width), cy1 = std::min(y1, grid.original_height);
  if (cx1 > cx0 && cy1 > cy0) {
    canvas.slice(0, cy0, cy1)
        .slice(1, cx0, cx1)
        .copy_(region.slice(0, cy0 - y0, cy1 - y0).slice(1, cx0 - x0, cx1 - x0));
  }
  return canvas;
}

at::Tensor contact_sheet(const std::vector<std::vector<at::Tensor>>& rows, int64_t height,
                         int64_t gap) {
  constexpr int64_t kMaxTileAspect = 8;
  if (height < 1 || gap < 0) {
    throw InputError::invalid_argument(
        "dinov2: contact_sheet: height must be positive and gap non-negative");
  }
  return guarded("contact_sheet", [&] {
    std::vector<at::Tensor> strips;
    int64_t width = 0;
    for (size_t r = 0; r < rows.size(); ++r) {
      std::vector<at::Tensor> parts;
      for (size_t i = 0; i < rows[r].size(); ++i) {
        at::Tensor img = rows[r][i];
        if (img.defined() && img.dim() == 2) img = img.unsqueeze(2);
        if (!img.defined() || img.dim() != 3 || img.scalar_type() != at::kByte ||
            (img.size(2) != 1 && img.size(2) != 3) || img.size(0) < 1 || img.size(1) < 1) {
          throw InputError("dinov2: contact_sheet: image " + std::to_string(i) + " of row " +
                           std::to_string(r) + " must be [H, W, 3] or [H, W] uint8; got " +
                           shape_of(rows[r][i]));
        }
        img = img.cpu().expand({img.size(0), img.size(1), 3}).contiguous();
        // Each tile fits a box of height x kMaxTileAspect * height: a 1x3000 strip would
        // otherwise be scaled to 256x768000 pixels. A wider image is shrunk to the box's width
        // and centred vertically on black.
        const double scale = std::min(static_cast<double>(height) / img.size(0),
                                      static_cast<double>(kMaxTileAspect * height) / img.size(1));
        const auto w = std::max<int64_t>(1, std::llround(img.size(1) * scale));
        const auto h = std::clamp<int64_t>(std::llround(img.size(0) * scale), 1, height);
        cv::Mat dst;
        cv::resize(mat_view(img), dst, cv::Size(static_cast<int>(w), static_cast<int>(h)), 0, 0,
                   cv::INTER_AREA);
        at::Tensor tile = tensor_copy(dst);
        if (h < height) {
          const int64_t top = (height - h) / 2;
          tile = at::constant_pad_nd(tile, {0, 0, 0, 0, top, height - h - top}, 0);
        }
        if (!parts.empty()) parts.push_back(at::zeros({height, gap, 3}, at::kByte));
        parts.push_back(tile);
      }
      if (parts.empty()) continue;
      strips.push_back(at::cat(parts, 1));
      width = std::max(width, strips.back().size(1));
    }
    if (strips.empty()) throw InputError("dinov2: contact_sheet: no images given");
    std::vector<at::Tensor> padded;
    for (size_t r = 0; r < strips.size(); ++r) {
      if (r) padded.push_back(at::zeros({gap, width, 3}, at::kByte));
      padded.push_back(at::constant_pad_nd(strips[r], {0, 0, 0, width - strips[r].size(1)}, 0));
    }
    return at::cat(padded, 0).contiguous();
  });
}

void save_png(const std::string& path, const at::Tensor& image) {
  at::Tensor img = image;
  if (img.defined() && img.dim() == 2) img = img.unsqueeze(2);
  if (!img.defined() || img.dim() != 3 || img.scalar_type() != at::kByte ||
      (img.size(2) != 1 && img.size(2) != 3) || img.size(0) < 1 || img.size(1) < 1) {
    throw InputError("dinov2: save_png(" + path +
                     ") needs an [H, W, 3] RGB or [H, W] grey uint8 image; got " + shape_of(image));
  }
  const std::vector<uchar> bytes = guarded("save_png", [&] {
    const at::Tensor c = img.cpu().contiguous();
    cv::Mat bgr;
    if (c.size(2) == 3) {
      cv::cvtColor(mat_view(c), bgr, cv::COLOR_RGB2BGR);
    } else {
      bgr = mat_view(c);
    }
    std::vector<uchar> buffer;
    if (!cv::imencode(".png", bgr, buffer)) {
      throw InputError("dinov2: save_png: OpenCV could not encode " + path + " as PNG");
    }
    return buffer;
  });
  write_file_atomically(path, std::string(bytes.begin(), bytes.end()));
}

}  // namespace dinov2
