// SPDX-License-Identifier: Apache-2.0
// Reading and decoding image files under ImageLimits: file checks, the JPEG and PNG end-marker
// walks, the size from the header before decoding, and cv::imdecode with a reason for every
// failure. The header parsers read untrusted bytes: every index is checked against the size.
#include <fmt/format.h>

#include <opencv2/core/utils/logger.hpp>
#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <new>
#include <vector>

#include "dinov2/error.hpp"
#include "dinov2/image.hpp"
#include "dinov2/opencv.hpp"

namespace dinov2 {

namespace {

namespace fs = std::filesystem;

constexpr std::string_view kPngSignature("\x89PNG\r\n\x1A\n", 8);

bool starts_with(std::string_view b, std::string_view magic, size_t at = 0) {
  return b.size() >= at + magic.size() && b.substr(at, magic.size()) == magic;
}

uint32_t u8(std::string_view b, size_t at) { return static_cast<unsigned char>(b[at]); }

uint32_t be16(std::string_view b, size_t at) { return (u8(b, at) << 8) | u8(b, at + 1); }

uint32_t le16(std::string_view b, size_t at) { return u8(b, at) | (u8(b, at + 1) << 8); }

uint32_t be32(std::string_view b, size_t at) { return (be16(b, at) << 16) | be16(b, at + 2); }

uint32_t le32(std::string_view b, size_t at) { return le16(b, at) | (le16(b, at + 2) << 16); }

bool is_jpeg(std::string_view b) { return starts_with(b, std::string_view("\xFF\xD8", 2)); }

bool is_png(std::string_view b) { return starts_with(b, kPngSignature); }

bool is_webp(std::string_view b) { return starts_with(b, "RIFF") && starts_with(b, "WEBP", 8); }

bool is_tiff(std::string_view b) {
  return starts_with(b, std::string_view("II*\0", 4)) ||
         starts_with(b, std::string_view("MM\0*", 4));
}

// Walks the marker segments of a JPEG up to its end-of-image marker. libjpeg only warns about a
// file that ends early (and fills the rest of the picture with grey), so a truncated download
// would otherwise pass as an image. What libjpeg itself treats as fatal (an unknown marker, a
// segment length below 2, a second start-of-image) is reported here with its position; what it
// only warns about (stray bytes between segments, damaged entropy-coded data) is left to it, as
// PIL and OpenCV accept such files.
std::optional<std::string> jpeg_problem(std::string_view b) {
  const size_t n = b.size();
  const std::string truncated = fmt::format(
      "truncated JPEG: the data ends after {} bytes, before the end-of-image marker", n);
  size_t pos = 2;
  while (true) {
    if (pos >= n) return truncated;
    if (pos == 2 && u8(b, pos) != 0xFF) {
      return fmt::format("corrupt JPEG: no marker after the start-of-image marker (found 0x{:02X})",
                         u8(b, pos));
    }
    // Stray bytes before a marker: libjpeg (and so OpenCV and PIL) skips them with a warning.
    while (pos < n && u8(b, pos) != 0xFF) ++pos;
    while (pos < n && u8(b, pos) == 0xFF) ++pos;  // fill bytes
    if (pos >= n) return truncated;
    const uint32_t marker = u8(b, pos++);
    if (marker == 0xD9) return std::nullopt;
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue;  // no payload
    if (marker == 0x00) {
      return fmt::format("corrupt JPEG: damaged compressed data near byte {}", pos - 2);
    }
    if (marker < 0xC0 || marker == 0xD8) {
      return fmt::format("corrupt JPEG: invalid marker 0xFF{:02X} at byte {}", marker, pos - 2);
    }
    if (pos + 2 > n) return truncated;
    const size_t len = be16(b, pos);
    if (len < 2) {
      return fmt::format("corrupt JPEG: segment 0xFF{:02X} at byte {} has length {}", marker,
                         pos - 2, len);
    }
    if (pos + len > n) return truncated;
    pos += len;
    if (marker == 0xDA) {
      // Entropy-coded data: runs until a marker other than a stuffed 0xFF00 or a restart.
      while (true) {
        if (pos + 1 >= n) return truncated;
        if (u8(b, pos) != 0xFF) {
          ++pos;
          continue;
        }
        const uint32_t next = u8(b, pos + 1);
        if (next == 0x00 || (next >= 0xD0 && next <= 0xD7)) {
          pos += 2;
        } else if (next == 0xFF) {
          ++pos;
        } else {
          break;
        }
      }
    }
  }
}

// Walks the chunks of a PNG up to IEND (libpng reports truncation too, but without saying so).
std::optional<std::string> png_problem(std::string_view b) {
  const size_t n = b.size();
  size_t pos = kPngSignature.size();
  std::string last = "the signature";
  while (true) {
    if (pos + 8 > n) {
      return fmt::format(
          "truncated PNG: the data ends after {} bytes, after {}, before the IEND "
          "chunk",
          n, last);
    }
    const uint32_t len = be32(b, pos);
    const std::string_view type = b.substr(pos + 4, 4);
    if (len > 0x7FFFFFFFu || !std::all_of(type.begin(), type.end(), [](char c) {
          return std::isalpha(static_cast<unsigned char>(c)) != 0;
        })) {
      return fmt::format("corrupt PNG: invalid chunk header at byte {}", pos);
    }
    if (pos + 12 + size_t{len} > n) {
      return fmt::format(
          "truncated PNG: the data ends after {} bytes, inside chunk '{}' at byte {}", n, type,
          pos);
    }
    if (type == "IEND") return std::nullopt;
    last = fmt::format("chunk '{}'", type);
    pos += 12 + size_t{len};
  }
}

using Size = std::pair<int64_t, int64_t>;

// The first frame header (SOF0..SOF15, not DHT, JPG or DAC) before the scan data; markers are
// found as libjpeg finds them, skipping stray bytes.
std::optional<Size> jpeg_size(std::string_view b) {
  const size_t n = b.size();
  size_t pos = 2;
  while (pos < n) {
    while (pos < n && u8(b, pos) != 0xFF) ++pos;
    while (pos < n && u8(b, pos) == 0xFF) ++pos;
    if (pos >= n) break;
    const uint32_t marker = u8(b, pos++);
    if (marker == 0xD9 || marker == 0xDA) break;
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue;
    if (pos + 2 > n) break;
    const size_t len = be16(b, pos);
    const bool frame =
        marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    // A frame header: length (2), precision (1), height (2), width (2).
    if (frame) {
      if (len < 7 || pos + 7 > n) break;
      return Size{be16(b, pos + 5), be16(b, pos + 3)};
    }
    if (len < 2) break;
    pos += len;
  }
  return std::nullopt;
}

std::optional<Size> bmp_size(std::string_view b) {
  if (b.size() < 26) return std::nullopt;
  // OS/2 1.x BITMAPCOREHEADER (12 bytes): 16-bit unsigned sizes; every later header: 32-bit
  // signed, a negative height meaning top-down rows.
  if (le32(b, 14) == 12) return Size{le16(b, 18), le16(b, 20)};
  const auto w = static_cast<int32_t>(le32(b, 18));
  const auto h = static_cast<int32_t>(le32(b, 22));
  return Size{std::abs(int64_t{w}), std::abs(int64_t{h})};
}

std::optional<Size> webp_size(std::string_view b) {
  if (b.size() < 30) return std::nullopt;
  if (starts_with(b, "VP8X", 12)) {
    // The canvas size minus one, 24 bits each.
    return Size{1 + int64_t{u8(b, 24) | (u8(b, 25) << 8) | (u8(b, 26) << 16)},
                1 + int64_t{u8(b, 27) | (u8(b, 28) << 8) | (u8(b, 29) << 16)}};
  }
  if (starts_with(b, "VP8L", 12)) {
    // After the 0x2F signature at byte 20: 14 bits width minus one, 14 bits height minus one.
    const uint32_t bits = le32(b, 21);
    return Size{int64_t{(bits & 0x3FFF) + 1}, int64_t{((bits >> 14) & 0x3FFF) + 1}};
  }
  if (starts_with(b, "VP8 ", 12)) {
    // After the 3-byte frame tag and the 3-byte start code: 14 bits each and a 2-bit scale.
    return Size{int64_t{le16(b, 26) & 0x3FFF}, int64_t{le16(b, 28) & 0x3FFF}};
  }
  return std::nullopt;
}

// ImageWidth (256) and ImageLength (257) of the first image file directory.
std::optional<Size> tiff_size(std::string_view b) {
  const size_t n = b.size();
  if (n < 8) return std::nullopt;
  const bool little = b[0] == 'I';
  auto r16 = [&](size_t i) { return little ? le16(b, i) : be16(b, i); };
  auto r32 = [&](size_t i) { return little ? le32(b, i) : be32(b, i); };
  const size_t ifd = r32(4);
  if (ifd > n || n - ifd < 2) return std::nullopt;
  const size_t entries = r16(ifd);
  int64_t w = -1;
  int64_t h = -1;
  for (size_t e = 0; e < entries && (n - ifd - 2) / 12 > e; ++e) {
    const size_t at = ifd + 2 + 12 * e;
    const uint32_t tag = r16(at);
    const uint32_t type = r16(at + 2);
    // A BYTE (1) or SHORT (3) value sits at the start of the 4-byte value field, a LONG (4)
    // fills it; other types are not sizes.
    int64_t value = -1;
    if (type == 1) value = u8(b, at + 8);
    if (type == 3) value = r16(at + 8);
    if (type == 4) value = r32(at + 8);
    if (tag == 256 && value >= 0) w = value;
    if (tag == 257 && value >= 0) h = value;
  }
  if (w < 0 || h < 0) return std::nullopt;
  return Size{w, h};
}

std::string trim(std::string s) {
  const auto space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  s.erase(s.begin(), std::find_if_not(s.begin(), s.end(), space));
  s.erase(std::find_if_not(s.rbegin(), s.rend(), space).base(), s.end());
  return s;
}

// What data that no decoder took looks like: its first 16 characters if it is text, else its
// first 8 bytes in hex.
std::string describe_start(std::string_view b) {
  const std::string_view head = b.substr(0, 16);
  const bool text = std::all_of(head.begin(), head.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return std::isprint(u) || std::isspace(u) || u >= 0x80;
  });
  if (text) {
    std::string shown;
    for (char c : head) shown.push_back(std::isprint(static_cast<unsigned char>(c)) ? c : ' ');
    return fmt::format("it looks like text: \"{}\"", trim(shown));
  }
  std::string hex;
  for (size_t i = 0; i < std::min<size_t>(8, b.size()); ++i)
    hex += fmt::format("{:02X} ", u8(b, i));
  return fmt::format("it starts with bytes {}", trim(hex));
}

// "1 MiB" for whole MiB, else "N bytes".
std::string describe_bytes(int64_t bytes) {
  return bytes > 0 && bytes % (int64_t{1} << 20) == 0 ? fmt::format("{} MiB", bytes >> 20)
                                                      : fmt::format("{} bytes", bytes);
}

std::string over_file_limit(const char* what, int64_t bytes, int64_t limit) {
  return fmt::format(
      "{} has {} bytes, over the limit of {} (ImageLimits::max_file_bytes, "
      "--max-file-size)",
      what, bytes, describe_bytes(limit));
}

// Whether w x h exceeds the limit; w and h come from a hostile header (each below 2^32, so the
// product fits in 64 unsigned bits).
bool over_pixel_limit(int64_t w, int64_t h, int64_t limit) {
  return uint64_t(w) * uint64_t(h) > uint64_t(std::max<int64_t>(limit, 0));
}

std::string over_pixels(const char* what, int64_t w, int64_t h, int64_t limit) {
  return fmt::format(
      "{} {}x{} pixels ({}), over the limit of {} (ImageLimits::max_pixels, "
      "--max-pixels); a decompression bomb, or an image to shrink first",
      what, w, h, uint64_t(w) * uint64_t(h), limit);
}

// OpenCV logs what its decoders reject; every rejection is reported here instead. An explicit
// OPENCV_LOG_LEVEL wins.
void silence_opencv() {
  static const bool done = [] {
    if (std::getenv("OPENCV_LOG_LEVEL") == nullptr) {
      cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_SILENT);
    }
    return true;
  }();
  (void)done;
}

DecodedImage failed(std::string reason) {
  DecodedImage result;
  result.error = std::move(reason);
  return result;
}

}  // namespace

std::optional<std::pair<int64_t, int64_t>> image_header_size(std::string_view bytes) {
  if (is_png(bytes)) {
    // IHDR must be the first chunk: length (4), "IHDR", width (4), height (4).
    if (bytes.size() < 24 || !starts_with(bytes, "IHDR", 12)) return std::nullopt;
    return Size{be32(bytes, 16), be32(bytes, 20)};
  }
  if (is_jpeg(bytes)) return jpeg_size(bytes);
  if (starts_with(bytes, "BM")) return bmp_size(bytes);
  if (is_webp(bytes)) return webp_size(bytes);
  if (is_tiff(bytes)) return tiff_size(bytes);
  return std::nullopt;
}

DecodedImage try_decode_image(std::string_view bytes, const ImageLimits& limits,
                              bool apply_exif_orientation) {
  silence_opencv();
  if (bytes.empty()) return failed("empty data (0 bytes)");
  if (bytes.size() > uint64_t(std::max<int64_t>(limits.max_file_bytes, 0))) {
    return failed(
        over_file_limit("the data", static_cast<int64_t>(bytes.size()), limits.max_file_bytes));
  }
  if (bytes.size() > size_t{INT_MAX}) {
    return failed(fmt::format("the data has {} bytes; OpenCV decodes at most {} bytes",
                              bytes.size(), INT_MAX));
  }

  bool known = true;
  if (is_jpeg(bytes)) {
    if (auto problem = jpeg_problem(bytes)) return failed(std::move(*problem));
  } else if (is_png(bytes)) {
    if (auto problem = png_problem(bytes)) return failed(std::move(*problem));
  } else if (!(starts_with(bytes, "BM") || is_tiff(bytes) || is_webp(bytes))) {
    known = false;  // maybe another format OpenCV reads (PPM, JPEG 2000, ...): let it try
  }
  const auto size = image_header_size(bytes);
  if (size && over_pixel_limit(size->first, size->second, limits.max_pixels)) {
    return failed(over_pixels("the header says", size->first, size->second, limits.max_pixels));
  }
  if (!size && is_jpeg(bytes)) {
    // libjpeg refuses it too (no image, or scan data before the frame header).
    return failed("corrupt JPEG: no frame header before the image data");
  }

  cv::Mat image;
  try {
    const cv::Mat buffer(1, static_cast<int>(bytes.size()), CV_8U,
                         const_cast<char*>(bytes.data()));  // imdecode only reads it
    image = cv::imdecode(
        buffer, cv::IMREAD_COLOR | (apply_exif_orientation ? 0 : cv::IMREAD_IGNORE_ORIENTATION));
  } catch (const cv::Exception& e) {
    return failed(fmt::format("cannot decode the image ({})", e.err));
  } catch (const std::bad_alloc&) {
    return failed(
        size ? fmt::format("out of memory decoding a {}x{} image", size->first, size->second)
             : std::string("out of memory decoding the image"));
  } catch (const std::exception& e) {
    return failed(fmt::format("cannot decode the image ({})", e.what()));
  }
  if (image.empty()) {
    return failed(
        known ? std::string("corrupt image data: the decoder rejected it")
              : fmt::format("not an image in a supported format ({})", describe_start(bytes)));
  }
  // A format without a header check was decoded under OpenCV's own limit; hold it to ours.
  if (over_pixel_limit(image.cols, image.rows, limits.max_pixels)) {
    return failed(over_pixels("the image has", image.cols, image.rows, limits.max_pixels));
  }
  DecodedImage result;
  result.image = std::move(image);
  return result;
}

DecodedImage try_load_image(const std::string& path, const ImageLimits& limits,
                            bool apply_exif_orientation) {
  std::string bytes;
  try {
    std::error_code ec;
    const auto status = fs::status(path, ec);
    if (ec || !fs::exists(status)) return failed("no such file");
    if (fs::is_directory(status)) return failed("is a folder");
    if (!fs::is_regular_file(status)) {
      // Reading a FIFO blocks until a writer comes, a device such as /dev/zero never ends.
      return failed(fmt::format("not a regular file (a {}); only files are read",
                                fs::is_fifo(status)             ? "FIFO"
                                : fs::is_socket(status)         ? "socket"
                                : fs::is_character_file(status) ? "character device"
                                : fs::is_block_file(status)     ? "block device"
                                                                : "special file"));
    }
    const int64_t limit = std::max<int64_t>(limits.max_file_bytes, 0);
    const auto file_bytes = fs::file_size(path, ec);
    if (!ec && file_bytes > uint64_t(limit)) {
      return failed(
          over_file_limit("the file", static_cast<int64_t>(file_bytes), limits.max_file_bytes));
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) return failed(fmt::format("cannot open the file ({})", std::strerror(errno)));
    // Read in blocks, never past the limit: the file may have grown since its size was taken.
    std::vector<char> block(size_t{1} << 20);
    if (!ec) bytes.reserve(static_cast<size_t>(file_bytes));
    while (in) {
      in.read(block.data(), static_cast<std::streamsize>(block.size()));
      bytes.append(block.data(), static_cast<size_t>(in.gcount()));
      if (bytes.size() > uint64_t(limit)) {
        return failed(
            over_file_limit("the file", static_cast<int64_t>(bytes.size()), limits.max_file_bytes));
      }
    }
    if (in.bad()) return failed(fmt::format("cannot read the file ({})", std::strerror(errno)));
    if (bytes.empty()) return failed("empty file (0 bytes)");
  } catch (const std::bad_alloc&) {
    return failed("out of memory reading the file");
  } catch (const std::exception& e) {
    return failed(fmt::format("cannot read the file ({})", e.what()));
  }
  return try_decode_image(bytes, limits, apply_exif_orientation);
}

cv::Mat decode_image(std::string_view bytes, const ImageLimits& limits,
                     bool apply_exif_orientation) {
  DecodedImage d = try_decode_image(bytes, limits, apply_exif_orientation);
  if (!d.ok()) throw InputError("dinov2: cannot decode the image data: " + d.error);
  return std::move(d.image);
}

cv::Mat load_image(const std::string& path, const ImageLimits& limits,
                   bool apply_exif_orientation) {
  DecodedImage d = try_load_image(path, limits, apply_exif_orientation);
  if (!d.ok()) throw InputError("dinov2: cannot read the image file '" + path + "': " + d.error);
  return std::move(d.image);
}

cv::Mat load_image(const std::string& path, bool apply_exif_orientation) {
  return load_image(path, ImageLimits{}, apply_exif_orientation);
}

}  // namespace dinov2
