// SPDX-License-Identifier: Apache-2.0
// Preprocessing: recipe geometry, a resampler that reproduces Pillow's antialiased bicubic resize,
// normalisation and batching. docs/PREPROCESSING.md states the formulas implemented here.
#include "dinov2/preprocess.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <sstream>
#include <system_error>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>

#include "detail/resample.hpp"
#include "detail/text.hpp"
#include "dinov2/error.hpp"
#include "dinov2/model.hpp"

namespace dinov2 {

namespace {

using detail::bad_argument;
using detail::grain_rows;
using detail::parallel_rows;
using detail::resample;
using detail::Resampled;
using detail::TapCache;

// ---------------------------------------------------------------------------------------------
// One image through the plan

int bytes_per_sample(SampleType type) {
  switch (type) {
    case SampleType::kUInt8:
      return 1;
    case SampleType::kUInt16:
      return 2;
    case SampleType::kFloat32:
      return 4;
    case SampleType::kFloat64:
      return 8;
  }
  return 0;
}

const char* sample_type_name(SampleType type) {
  switch (type) {
    case SampleType::kUInt8:
      return "uint8";
    case SampleType::kUInt16:
      return "uint16";
    case SampleType::kFloat32:
      return "float32";
    case SampleType::kFloat64:
      return "float64";
  }
  return "unknown";
}

// Checks an ImageView and returns its row stride in bytes.
int64_t checked_stride(const ImageView& image, std::size_t index, std::size_t count) {
  const std::string which = count > 1 ? fmt::format("image {}", index) : std::string("image");
  if (image.data == nullptr || image.height <= 0 || image.width <= 0) {
    throw InputError(fmt::format(
        "dinov2: {} is empty ({}x{} pixels{}); check that it was loaded or decoded correctly",
        which, image.height, image.width, image.data == nullptr ? ", no pixel data" : ""));
  }
  if (image.channels != 1 && image.channels != 3 && image.channels != 4) {
    throw InputError(fmt::format(
        "dinov2: {} has {} channels; expected 1 (gray), 3 (colour) or 4 (colour and alpha); "
        "convert it to RGB or BGR first",
        which, image.channels));
  }
  const int bytes = bytes_per_sample(image.type);
  if (bytes == 0) {
    throw InputError(fmt::format("dinov2: {} has an unknown SampleType ({})", which,
                                 static_cast<int>(image.type)));
  }
  const int64_t packed = image.width * image.channels * bytes;
  const int64_t stride = image.row_stride == 0 ? packed : image.row_stride;
  if (stride < packed) {
    throw InputError(
        fmt::format("dinov2: {} has row_stride {} bytes, less than one row of {} {} pixels with {} "
                    "channels ({} bytes); set row_stride to 0 for packed rows",
                    which, image.row_stride, image.width, sample_type_name(image.type),
                    image.channels, packed));
  }
  return stride;
}

// Writes (x / 255 - mean) / stddev, or (x - mean) / stddev for floats, as [3, H, W] planes. The
// float32 operations are the ones torchvision's ToTensor and Normalize perform.
void normalise_into(const Resampled& r, const Normalization& n, float* dst) {
  const int64_t plane = r.height * r.width;
  const int K = r.channels;
  if (r.is_u8()) {
    float lut[3][256];
    for (int c = 0; c < 3; ++c) {
      for (int v = 0; v < 256; ++v) {
        lut[c][v] = (static_cast<float>(v) / 255.0f - n.mean[c]) / n.stddev[c];
      }
    }
    const uint8_t* src = r.bytes.data();
    parallel_rows(0, plane, 65536, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int c = 0; c < 3; ++c) dst[c * plane + i] = lut[c][src[i * K + (K == 1 ? 0 : c)]];
      }
    });
    return;
  }
  const float* src = r.floats.data();
  parallel_rows(0, plane, 65536, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int c = 0; c < 3; ++c) {
        dst[c * plane + i] = (src[i * K + (K == 1 ? 0 : c)] - n.mean[c]) / n.stddev[c];
      }
    }
  });
}

at::Tensor to_hwc_tensor(const Resampled& r) {
  const auto options = at::TensorOptions().dtype(r.is_u8() ? at::kByte : at::kFloat);
  at::Tensor out = at::empty({r.height, r.width, 3}, options);
  const int64_t pixels = r.height * r.width;
  if (r.is_u8()) {
    uint8_t* dst = out.data_ptr<uint8_t>();
    if (r.channels == 3) {
      std::memcpy(dst, r.bytes.data(), r.bytes.size());
    } else {
      for (int64_t i = 0; i < pixels; ++i)
        dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = r.bytes[i];
    }
  } else {
    float* dst = out.data_ptr<float>();
    if (r.channels == 3) {
      std::memcpy(dst, r.floats.data(), r.floats.size() * sizeof(float));
    } else {
      for (int64_t i = 0; i < pixels; ++i) {
        dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = r.floats[static_cast<std::size_t>(i)];
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Tensors as images

std::string shape_text(at::IntArrayRef sizes) {
  std::string s = "[";
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(sizes[i]);
  }
  return s + "]";
}

bool is_channel_count(int64_t n) { return n == 1 || n == 3 || n == 4; }

// A 2-D or 3-D image tensor made contiguous HWC on the CPU, and its view. The tensor owns the
// pixels the view points to.
struct TensorImage {
  at::Tensor hwc;
  ImageView view;
};

TensorImage tensor_image(const at::Tensor& input, TensorLayout layout, ChannelOrder order,
                         const std::string& which) {
  if (!input.defined()) {
    throw InputError(fmt::format("dinov2: {} is an undefined tensor; pass an image tensor", which));
  }
  const auto sizes = input.sizes();
  if (input.dim() != 2 && input.dim() != 3) {
    throw InputError(fmt::format(
        "dinov2: {} has {} dimensions (shape {}); expected [H, W], [H, W, C] or [C, H, W]", which,
        input.dim(), shape_text(sizes)));
  }
  SampleType type;
  at::Tensor t = input;
  switch (input.scalar_type()) {
    case at::kByte:
      type = SampleType::kUInt8;
      break;
    case at::kUInt16:
      type = SampleType::kUInt16;
      break;
    case at::kFloat:
      type = SampleType::kFloat32;
      break;
    case at::kDouble:
      type = SampleType::kFloat64;
      break;
    case at::kHalf:
    case at::kBFloat16:
      type = SampleType::kFloat32;
      t = t.to(at::kFloat);
      break;
    default:
      throw InputError(fmt::format(
          "dinov2: {} has dtype {}; expected uint8 (0..255), uint16 (0..65535) or a floating "
          "dtype (0..1); convert it, e.g. with .to(at::kByte) for values 0..255",
          which, c10::toString(input.scalar_type())));
  }
  if (t.dim() == 2) {
    t = t.unsqueeze(2);
  } else {
    TensorLayout chosen = layout;
    const bool hwc = is_channel_count(sizes[2]);
    const bool chw = is_channel_count(sizes[0]);
    if (layout == TensorLayout::kAuto) {
      if (hwc == chw) {
        throw InputError(fmt::format(
            "dinov2: cannot tell the layout of {} with shape {}: {}; pass TensorLayout::kHWC or "
            "TensorLayout::kCHW",
            which, shape_text(sizes),
            hwc ? "both the first and the last dimension could be channels"
                : "neither the first nor the last dimension is 1, 3 or 4 channels"));
      }
      chosen = hwc ? TensorLayout::kHWC : TensorLayout::kCHW;
    }
    const int64_t channels = chosen == TensorLayout::kHWC ? sizes[2] : sizes[0];
    if (!is_channel_count(channels)) {
      throw InputError(fmt::format(
          "dinov2: {} with shape {} has {} channels in the {} layout; expected 1 (gray), 3 "
          "(colour) or 4 (colour and alpha)",
          which, shape_text(sizes), channels, chosen == TensorLayout::kHWC ? "HWC" : "CHW"));
    }
    if (chosen == TensorLayout::kCHW) t = t.permute({1, 2, 0});
  }
  TensorImage out;
  out.hwc = t.cpu().contiguous();
  out.view.data = out.hwc.data_ptr();
  out.view.height = out.hwc.size(0);
  out.view.width = out.hwc.size(1);
  out.view.channels = static_cast<int>(out.hwc.size(2));
  out.view.row_stride = 0;
  out.view.type = type;
  out.view.order = order;
  if (out.view.height == 0 || out.view.width == 0) {
    throw InputError(fmt::format("dinov2: {} is empty (shape {}); pass an image with pixels", which,
                                 shape_text(sizes)));
  }
  return out;
}

std::vector<TensorImage> tensor_images(const std::vector<at::Tensor>& images, TensorLayout layout,
                                       ChannelOrder order) {
  std::vector<TensorImage> out;
  out.reserve(images.size());
  for (std::size_t i = 0; i < images.size(); ++i) {
    const std::string which =
        images.size() > 1 ? fmt::format("image tensor {}", i) : std::string("image tensor");
    out.push_back(tensor_image(images[i], layout, order, which));
  }
  return out;
}

std::vector<ImageView> views_of(const std::vector<TensorImage>& images) {
  std::vector<ImageView> views;
  views.reserve(images.size());
  for (const auto& image : images) views.push_back(image.view);
  return views;
}

// Runs f, turning LibTorch errors (e.g. an allocation failure) into dinov2 errors.
template <typename F>
auto guarded(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw RuntimeError(fmt::format("dinov2: preprocessing failed inside LibTorch: {}",
                                   e.what_without_backtrace()));
  }
}

}  // namespace

// -----------------------------------------------------------------------------------------------
// Preprocessor

Preprocessor::Preprocessor(Recipe recipe, Normalization normalization)
    : recipe_(recipe), normalization_(normalization) {
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(normalization_.mean[c]) || !std::isfinite(normalization_.stddev[c]) ||
        normalization_.stddev[c] <= 0.0f) {
      bad_argument(fmt::format(
          "dinov2: Preprocessor: normalisation channel {} has mean {} and std {}; both must be "
          "finite and the std positive",
          c, normalization_.mean[c], normalization_.stddev[c]));
    }
  }
}

Preprocessor Preprocessor::for_model(const Model& model, Recipe recipe) {
  const ModelInfo& info = model.info();
  if (info.patch_size != kPatchSize) {
    bad_argument(fmt::format(
        "dinov2: Preprocessor::for_model: the model '{}' has {}-pixel patches; the recipes plan "
        "{}-pixel patches (every DINOv2 backbone)",
        info.variant, info.patch_size, kPatchSize));
  }
  Normalization normalization;
  normalization.mean = info.mean;
  normalization.stddev = info.std;
  return Preprocessor(recipe, normalization);
}

Batch Preprocessor::operator()(const ImageView& image) const {
  return (*this)(std::vector<ImageView>{image});
}

Batch Preprocessor::operator()(const std::vector<ImageView>& images) const {
  if (images.empty()) {
    throw InputError("dinov2: no images to preprocess; pass at least one");
  }
  return guarded([&] {
    std::vector<int64_t> strides;
    std::vector<ResizePlan> plans;
    for (std::size_t i = 0; i < images.size(); ++i) {
      strides.push_back(checked_stride(images[i], i, images.size()));
      plans.push_back(recipe_.plan(images[i].height, images[i].width));
      const PatchGrid& g0 = plans.front().grid;
      const PatchGrid& g = plans.back().grid;
      if (g.rows != g0.rows || g.cols != g0.cols) {
        throw InputError(fmt::format(
            "dinov2: images 0 ({}x{}) and {} ({}x{}) give different model input sizes under {}: "
            "{}x{} and {}x{}; preprocess them separately, use Preprocessor::group_by_shape, or "
            "use a fixed-size recipe (square, resize, eval_center_crop)",
            images[0].height, images[0].width, i, images[i].height, images[i].width,
            recipe_.to_string(), g0.height(), g0.width(), g.height(), g.width()));
      }
    }
    const PatchGrid& g0 = plans.front().grid;
    Batch batch;
    batch.pixels = at::empty({static_cast<int64_t>(images.size()), 3, g0.height(), g0.width()},
                             at::TensorOptions().dtype(at::kFloat));
    float* dst = batch.pixels.data_ptr<float>();
    const int64_t per_image = 3 * g0.height() * g0.width();
    TapCache cache;
    for (std::size_t i = 0; i < images.size(); ++i) {
      const Resampled r = resample(images[i], strides[i], plans[i], cache);
      normalise_into(r, normalization_, dst + static_cast<int64_t>(i) * per_image);
      batch.grids.push_back(plans[i].grid);
    }
    return batch;
  });
}

Batch Preprocessor::operator()(const at::Tensor& images, TensorLayout layout,
                               ChannelOrder order) const {
  if (images.defined() && images.dim() == 4) {
    if (images.size(0) == 0) {
      throw InputError(fmt::format("dinov2: the image batch tensor {} holds no images",
                                   shape_text(images.sizes())));
    }
    return (*this)(images.unbind(0), layout, order);
  }
  const auto held = guarded([&] { return tensor_images({images}, layout, order); });
  return (*this)(views_of(held));
}

Batch Preprocessor::operator()(const std::vector<at::Tensor>& images, TensorLayout layout,
                               ChannelOrder order) const {
  const auto held = guarded([&] { return tensor_images(images, layout, order); });
  return (*this)(views_of(held));
}

std::vector<ShapeGroup> Preprocessor::group_by_shape(const std::vector<ImageView>& images) const {
  std::vector<ShapeGroup> groups;
  std::map<std::pair<int64_t, int64_t>, std::size_t> where;
  std::vector<std::vector<ImageView>> members;
  for (std::size_t i = 0; i < images.size(); ++i) {
    checked_stride(images[i], i, images.size());
    const PatchGrid g = recipe_.plan(images[i].height, images[i].width).grid;
    const auto key = std::make_pair(g.rows, g.cols);
    auto it = where.find(key);
    if (it == where.end()) {
      it = where.emplace(key, groups.size()).first;
      groups.emplace_back();
      members.emplace_back();
    }
    groups[it->second].indices.push_back(i);
    members[it->second].push_back(images[i]);
  }
  for (std::size_t k = 0; k < groups.size(); ++k) groups[k].batch = (*this)(members[k]);
  return groups;
}

std::vector<ShapeGroup> Preprocessor::group_by_shape(const std::vector<at::Tensor>& images,
                                                     TensorLayout layout,
                                                     ChannelOrder order) const {
  const auto held = guarded([&] { return tensor_images(images, layout, order); });
  return group_by_shape(views_of(held));
}

at::Tensor Preprocessor::resized(const ImageView& image) const {
  return guarded([&] {
    const int64_t stride = checked_stride(image, 0, 1);
    const ResizePlan plan = recipe_.plan(image.height, image.width);
    TapCache cache;
    return to_hwc_tensor(resample(image, stride, plan, cache));
  });
}

at::Tensor Preprocessor::resized(const at::Tensor& image, TensorLayout layout,
                                 ChannelOrder order) const {
  const auto held = guarded([&] { return tensor_image(image, layout, order, "image tensor"); });
  return resized(held.view);
}

}  // namespace dinov2
