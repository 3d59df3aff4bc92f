// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The limits that keep a hostile or broken image file from taking the machine, and the
/// image size read from a file's header without decoding. OpenCV-free: the functions that read
/// and decode images with these limits are in dinov2/opencv.hpp.
///
/// @code
/// // An 18 KB JPEG whose header claims 30000x30000 is refused before it is decoded:
/// auto limits = dinov2::ImageLimits{}.with_max_pixels(50'000'000);
/// dinov2::DecodedImage d = dinov2::try_load_image("upload.jpg", limits);  // dinov2/opencv.hpp
/// if (!d.ok()) std::cerr << "skipped: " << d.error << "\n";
/// @endcode
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>

namespace dinov2 {

/// @brief Resource limits for reading and decoding one image (load_image, try_load_image,
/// decode_image, try_decode_image). A plain struct: set the fields or chain the `with_*` setters.
/// Each limit is one number; a refusal names it (and the `dinov2` tool's flag that raises it).
/// Both must be positive.
struct ImageLimits {
  /// @brief Largest decoded image, in pixels (width x height). Read from the header of a JPEG,
  /// PNG, BMP, WebP or TIFF file before anything is decoded; other formats are decoded under
  /// OpenCV's own limit of 2^30 pixels and then checked. Default 178,956,970: Pillow's
  /// decompression-bomb limit (`--max-pixels` in the tool).
  int64_t max_pixels = 178956970;
  /// @brief Largest image file or encoded buffer, in bytes, checked before a file is read.
  /// Default 1 GiB (`--max-file-size`, in MiB, in the tool).
  int64_t max_file_bytes = int64_t{1} << 30;

  /// @brief Sets max_pixels.
  ImageLimits& with_max_pixels(int64_t n) {
    max_pixels = n;
    return *this;
  }
  /// @brief Sets max_file_bytes.
  ImageLimits& with_max_file_bytes(int64_t n) {
    max_file_bytes = n;
    return *this;
  }
};

/// @brief {width, height} in pixels as the header of an encoded image states it, without decoding:
/// a JPEG (its first frame header), PNG (IHDR), BMP, WebP (VP8, VP8L or VP8X) or TIFF (its first
/// image). std::nullopt for another format, or a header too short or malformed to say. The values
/// are those the file claims (up to 2^32 - 1 each), not checked against anything. Reads only
/// within `bytes`, whatever they hold; thread-safe.
std::optional<std::pair<int64_t, int64_t>> image_header_size(std::string_view bytes);

}  // namespace dinov2
