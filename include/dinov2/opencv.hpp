// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief OpenCV adapters: a cv::Mat as an ImageView for the Preprocessor, image files and
/// encoded bytes decoded with OpenCV under ImageLimits (dinov2/image.hpp), and resized tensors
/// back to cv::Mat for drawing.
///
/// The only dinov2 header that includes OpenCV. Every function converts cv::Exception into
/// dinov2::InputError (or, for try_load_image and try_decode_image, into the reason they return);
/// none lets an OpenCV exception escape.
///
/// @code
/// cv::Mat photo = dinov2::load_image("cat.jpg");          // 8-bit BGR
/// dinov2::Preprocessor pre(dinov2::Recipe::square(518));
/// dinov2::Batch batch = pre(dinov2::image_view(photo));   // pixels [1, 3, 518, 518]
/// @endcode
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dinov2/error.hpp"
#include "dinov2/image.hpp"
#include "dinov2/pipeline.hpp"
#include "dinov2/preprocess.hpp"

namespace dinov2 {

namespace detail {

/// @brief The OpenCV name of a depth code, e.g. "CV_8S".
inline std::string cv_depth_name(int depth) {
  switch (depth) {
    case CV_8U:
      return "CV_8U";
    case CV_8S:
      return "CV_8S";
    case CV_16U:
      return "CV_16U";
    case CV_16S:
      return "CV_16S";
    case CV_32S:
      return "CV_32S";
    case CV_32F:
      return "CV_32F";
    case CV_64F:
      return "CV_64F";
    case CV_16F:
      return "CV_16F";
    default:
      return "depth " + std::to_string(depth);
  }
}

}  // namespace detail

/// @brief Describes a cv::Mat for Preprocessor without copying; the Mat must stay alive (and
/// unchanged) until the Preprocessor call returns.
///
/// Accepted: 1 channel (gray, replicated to RGB), 3 channels (colour) or 4 (colour and alpha; the
/// alpha is dropped, not composited), of depth CV_8U (0..255, resized exactly as Pillow does),
/// CV_16U (v / 257 on the 8-bit scale), CV_32F or CV_64F (intensity in [0, 1]). Throws InputError
/// for an empty Mat, another channel count or depth, or a Mat with more than 2 dimensions.
/// @param order colour order of `image`: kBGR (default) for what cv::imread returns, kRGB for a
/// Mat already converted with cv::cvtColor(..., cv::COLOR_BGR2RGB).
inline ImageView image_view(const cv::Mat& image, ChannelOrder order = ChannelOrder::kBGR) {
  if (image.empty() || image.dims != 2) {
    throw InputError(image.empty()
                         ? std::string("dinov2: the cv::Mat image is empty (0x0); check that "
                                       "cv::imread or the decoder succeeded")
                         : "dinov2: the cv::Mat has " + std::to_string(image.dims) +
                               " dimensions; expected a 2-D image (rows x cols x channels)");
  }
  const int channels = image.channels();
  if (channels != 1 && channels != 3 && channels != 4) {
    throw InputError("dinov2: the cv::Mat image has " + std::to_string(channels) +
                     " channels; expected 1 (gray), 3 (BGR or RGB) or 4 (with alpha); convert it "
                     "with cv::cvtColor or cv::merge first");
  }
  ImageView view;
  switch (image.depth()) {
    case CV_8U:
      view.type = SampleType::kUInt8;
      break;
    case CV_16U:
      view.type = SampleType::kUInt16;
      break;
    case CV_32F:
      view.type = SampleType::kFloat32;
      break;
    case CV_64F:
      view.type = SampleType::kFloat64;
      break;
    default:
      throw InputError("dinov2: the cv::Mat image has depth " +
                       detail::cv_depth_name(image.depth()) +
                       "; expected CV_8U, CV_16U, CV_32F or CV_64F; convert it with "
                       "Mat::convertTo, e.g. to CV_8U for values 0..255");
  }
  view.data = image.data;
  view.height = image.rows;
  view.width = image.cols;
  view.channels = channels;
  view.row_stride = static_cast<int64_t>(image.step[0]);
  view.order = order;
  return view;
}

/// @brief image_view() of each Mat, in order; the Mats must outlive the Preprocessor call.
inline std::vector<ImageView> image_views(const std::vector<cv::Mat>& images,
                                          ChannelOrder order = ChannelOrder::kBGR) {
  std::vector<ImageView> views;
  views.reserve(images.size());
  for (std::size_t i = 0; i < images.size(); ++i) {
    try {
      views.push_back(image_view(images[i], order));
    } catch (const InputError& e) {
      throw InputError("dinov2: image " + std::to_string(i) + ": " + e.message());
    }
  }
  return views;
}

/// @brief A cv::Mat as a Pipeline input. The Mat's pixels are shared, not copied (cv::Mat counts
/// references), and kept alive until the Pipeline has preprocessed them; do not write to them
/// meanwhile. Accepts what image_view() accepts, and throws InputError as it does.
/// @param name labels the image in results and failure reasons.
/// @param order colour order of `image`: kBGR (default) for what cv::imread returns.
inline ImageSource image_source(const cv::Mat& image, std::string name = "",
                                ChannelOrder order = ChannelOrder::kBGR) {
  const ImageView view = image_view(image, order);
  return ImageSource::pixels(view, std::make_shared<const cv::Mat>(image), std::move(name));
}

/// @brief A decoded image, owning its pixels, or the reason it could not be read.
struct DecodedImage {
  cv::Mat image;      ///< CV_8UC3, BGR (as load_image returns); empty when error is set
  std::string error;  ///< why it failed, without a "dinov2: " prefix; empty on success

  /// @brief Whether the image was decoded.
  bool ok() const { return error.empty(); }
};

/// @brief Decodes an encoded image (the bytes of a JPEG, PNG, BMP, TIFF, WebP or other file
/// OpenCV reads) with cv::imdecode as 8-bit BGR (cv::IMREAD_COLOR): gray is replicated to 3
/// channels, alpha dropped, 16-bit samples reduced to 8 bits by OpenCV.
///
/// Before decoding, data over limits.max_file_bytes is refused, JPEG and PNG data are walked to
/// their end marker (the decoders accept a truncated file with only a warning and grey or missing
/// rows), and the size in the header (image_header_size) is checked against limits.max_pixels,
/// so that a small file claiming a huge image costs no memory; formats without a header check
/// are held to max_pixels after decoding. Never throws for bad data: empty, too large, truncated,
/// corrupt or not an image gives a DecodedImage whose error says why; std::bad_alloc and OpenCV
/// exceptions become the reason too. The first call silences OpenCV's log messages
/// (cv::utils::logging) unless OPENCV_LOG_LEVEL is set, since every failure is reported here
/// (OpenCV 4.6 still prints some decoder failures to stderr itself). Thread-safe.
/// @param apply_exif_orientation rotate as the EXIF orientation says (OpenCV's default); false
/// keeps the stored pixel order, as PIL's Image.open does.
DecodedImage try_decode_image(std::string_view bytes, const ImageLimits& limits = {},
                              bool apply_exif_orientation = true);

/// @brief Reads an image file and decodes it as try_decode_image does. Only regular files are
/// read (a FIFO would block, a device such as /dev/zero never ends: refused with their kind), and
/// a file over limits.max_file_bytes is refused before it is read. Never throws for a bad file:
/// missing, a folder, unreadable, empty or undecodable gives a DecodedImage with the reason.
DecodedImage try_load_image(const std::string& path, const ImageLimits& limits = {},
                            bool apply_exif_orientation = true);

/// @brief try_decode_image, throwing instead.
/// @return CV_8UC3, BGR. Throws InputError "dinov2: cannot decode the image data: REASON".
cv::Mat decode_image(std::string_view bytes, const ImageLimits& limits = {},
                     bool apply_exif_orientation = true);

/// @brief Reads an image file as 8-bit BGR under the default ImageLimits (try_load_image,
/// throwing instead): gray images are replicated to 3 channels, alpha is dropped, 16-bit images
/// are reduced to 8 bits by OpenCV.
/// @param apply_exif_orientation rotate as the file's EXIF orientation says (OpenCV's default);
/// false keeps the stored pixel order, as PIL's Image.open does.
/// @return CV_8UC3, BGR. Throws InputError "dinov2: cannot read the image file 'PATH': REASON"
/// when the file is missing, not a regular file, unreadable, over a limit, truncated, corrupt or
/// not an image that OpenCV can decode.
cv::Mat load_image(const std::string& path, bool apply_exif_orientation = true);

/// @brief load_image under the given limits.
cv::Mat load_image(const std::string& path, const ImageLimits& limits,
                   bool apply_exif_orientation = true);

/// @brief A copy of an [H, W, 3] RGB image tensor (e.g. Preprocessor::resized()) as a CV_8UC3
/// BGR cv::Mat for cv::imwrite or drawing. Float tensors are read as [0, 1] and rounded to 8 bits
/// (values outside are clipped). Throws InputError for another shape or dtype.
inline cv::Mat to_bgr_mat(const at::Tensor& rgb) {
  if (!rgb.defined() || rgb.dim() != 3 || rgb.size(2) != 3 ||
      (rgb.scalar_type() != at::kByte && rgb.scalar_type() != at::kFloat)) {
    throw InputError(
        "dinov2: to_bgr_mat needs an [H, W, 3] uint8 or float32 RGB tensor (as "
        "Preprocessor::resized returns)");
  }
  cv::Mat out;
  try {
    const at::Tensor t = rgb.cpu().contiguous();
    const int rows = static_cast<int>(t.size(0));
    const int cols = static_cast<int>(t.size(1));
    out.create(rows, cols, CV_8UC3);
    const bool is_byte = t.scalar_type() == at::kByte;
    const uint8_t* bytes = is_byte ? t.data_ptr<uint8_t>() : nullptr;
    const float* floats = is_byte ? nullptr : t.data_ptr<float>();
    for (int y = 0; y < rows; ++y) {
      auto* dst = out.ptr<uint8_t>(y);
      for (int x = 0; x < cols; ++x) {
        for (int c = 0; c < 3; ++c) {
          const int64_t i = (static_cast<int64_t>(y) * cols + x) * 3 + (2 - c);
          if (is_byte) {
            dst[x * 3 + c] = bytes[i];
          } else {
            const float f = std::round(floats[i] * 255.0f);
            dst[x * 3 + c] = static_cast<uint8_t>(!(f > 0.0f) ? 0.0f : (f > 255.0f ? 255.0f : f));
          }
        }
      }
    }
  } catch (const cv::Exception& e) {
    throw RuntimeError(std::string("dinov2: to_bgr_mat: OpenCV failed: ") + e.what());
  } catch (const c10::Error& e) {
    throw RuntimeError(std::string("dinov2: to_bgr_mat: LibTorch failed: ") +
                       e.what_without_backtrace());
  }
  return out;
}

}  // namespace dinov2
