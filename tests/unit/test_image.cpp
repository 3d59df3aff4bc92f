// SPDX-License-Identifier: Apache-2.0
// Reading and decoding images under ImageLimits (src/image.cpp): decompression bombs refused from
// the header, truncated and corrupt data refused with a reason, the sizes image_header_size reads
// against the sizes the encoder was given, special files refused without being opened, and the
// pixels against cv::imdecode's own.
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dinov2/error.hpp"
#include "dinov2/image.hpp"
#include "dinov2/opencv.hpp"
#include "support.hpp"

using dinov2::DecodedImage;
using dinov2::ImageLimits;
using dinov2::InputError;
using dinov2::test::ContainsSubstring;

namespace {

namespace fs = std::filesystem;

using Size = std::optional<std::pair<int64_t, int64_t>>;

/// A 37x23 (width x height) BGR image of random pixels: no two sides or formats agree by chance.
cv::Mat random_image(int width = 37, int height = 23) {
  cv::Mat image(height, width, CV_8UC3);
  cv::RNG rng(7);
  rng.fill(image, cv::RNG::UNIFORM, 0, 256);
  return image;
}

/// `image` encoded by OpenCV as `ext` (".png", ".jpg", ...).
std::string encode(const cv::Mat& image, const std::string& ext,
                   const std::vector<int>& params = {}) {
  std::vector<uchar> buffer;
  REQUIRE(cv::imencode(ext, image, buffer, params));
  return std::string(buffer.begin(), buffer.end());
}

void put_be16(std::string& b, size_t at, uint32_t v) {
  b[at] = static_cast<char>(v >> 8);
  b[at + 1] = static_cast<char>(v);
}

void put_be32(std::string& b, size_t at, uint32_t v) {
  put_be16(b, at, v >> 16);
  put_be16(b, at + 2, v & 0xFFFF);
}

uint32_t crc32(std::string_view data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (char c : data) {
    crc ^= static_cast<unsigned char>(c);
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

/// A real JPEG whose frame header (SOF0) is patched to claim width x height.
std::string jpeg_claiming(uint32_t width, uint32_t height) {
  std::string b = encode(random_image(), ".jpg");
  const size_t at = b.find("\xFF\xC0");
  REQUIRE(at != std::string::npos);
  put_be16(b, at + 5, height);
  put_be16(b, at + 7, width);
  return b;
}

/// A real PNG whose IHDR (with a matching CRC) claims width x height.
std::string png_claiming(uint32_t width, uint32_t height) {
  std::string b = encode(random_image(), ".png");
  REQUIRE(b.substr(12, 4) == "IHDR");
  put_be32(b, 16, width);
  put_be32(b, 20, height);
  put_be32(b, 29, crc32(std::string_view(b).substr(12, 17)));
  return b;
}

std::string bytes_of(const cv::Mat& image, const std::string& ext) { return encode(image, ext); }

/// The bytes of a string literal, NULs included (without the terminating one).
template <size_t N>
std::string raw(const char (&literal)[N]) {
  return std::string(literal, N - 1);
}

/// The message of the InputError `f` throws; fails the test otherwise.
template <class F>
std::string input_error(F&& f) {
  return dinov2::test::message_of<InputError>(std::forward<F>(f));
}

using dinov2::test::TempDir;

double max_difference(const cv::Mat& a, const cv::Mat& b) {
  REQUIRE(a.size() == b.size());
  REQUIRE(a.type() == b.type());
  return cv::norm(a, b, cv::NORM_INF);
}

}  // namespace

TEST_CASE("a JPEG whose header claims 30000x30000 is refused from its header by load_image",
          "[image][errors]") {
  const std::string bomb = jpeg_claiming(30000, 30000);
  REQUIRE(bomb.size() < 20000);
  TempDir dir;
  const std::string path = dir.write("bomb.jpg", bomb);
  const std::string message = input_error([&] { dinov2::load_image(path); });
  CHECK_THAT(message, ContainsSubstring("dinov2: cannot read the image file '" + path + "': "));
  // "the header says": refused before decoding, not after (that message reads "the image has").
  CHECK_THAT(message, ContainsSubstring("the header says 30000x30000 pixels (900000000), over the "
                                        "limit of 178956970 (ImageLimits::max_pixels"));
  CHECK_THAT(input_error([&] { dinov2::decode_image(bomb); }),
             ContainsSubstring("ImageLimits::max_pixels"));
  // The same file with its true size decodes: only the claim was refused.
  CHECK(dinov2::try_decode_image(jpeg_claiming(37, 23)).ok());
}

TEST_CASE("a PNG whose header claims 20000x20000 is refused from its header by load_image",
          "[image][errors]") {
  const std::string bomb = png_claiming(20000, 20000);
  TempDir dir;
  const std::string path = dir.write("bomb.png", bomb);
  const std::string message = input_error([&] { dinov2::load_image(path); });
  CHECK_THAT(message, ContainsSubstring("'" + path + "'"));
  CHECK_THAT(message, ContainsSubstring("the header says 20000x20000 pixels (400000000)"));
  CHECK_THAT(message, ContainsSubstring("ImageLimits::max_pixels"));
}

TEST_CASE("a header claiming 2^32-1 squared pixels does not overflow past the limit",
          "[image][errors]") {
  const std::string bomb = png_claiming(0xFFFFFFFFu, 0xFFFFFFFFu);
  CHECK(dinov2::image_header_size(bomb) == Size({4294967295, 4294967295}));
  const DecodedImage d =
      dinov2::try_decode_image(bomb, ImageLimits{}.with_max_pixels(INT64_C(9223372036854775807)));
  // (2^32 - 1)^2 = 2^64 - 2^33 + 1, over any int64 limit.
  CHECK_THAT(d.error, ContainsSubstring("(18446744065119617025), over the limit"));
  CHECK(d.image.empty());
}

TEST_CASE("a small image decodes to the pixels cv::imdecode gives", "[image]") {
  const cv::Mat original = random_image();
  for (const std::string ext : {".png", ".jpg", ".bmp", ".tiff", ".webp"}) {
    CAPTURE(ext);
    if (!cv::haveImageWriter(ext)) {
      WARN("SKIPPED: this OpenCV cannot write " << ext);
      continue;
    }
    const std::string bytes = bytes_of(original, ext);
    const cv::Mat expected =
        cv::imdecode(std::vector<uchar>(bytes.begin(), bytes.end()), cv::IMREAD_COLOR);
    const DecodedImage d = dinov2::try_decode_image(bytes);
    REQUIRE(d.ok());
    CHECK(d.error.empty());
    CHECK(d.image.type() == CV_8UC3);
    CHECK(max_difference(d.image, expected) == 0.0);
    CHECK(max_difference(dinov2::decode_image(bytes), expected) == 0.0);
    if (ext != ".jpg" && ext != ".webp") CHECK(max_difference(d.image, original) == 0.0);
  }
  TempDir dir;
  const std::string path = dir.write("small.png", bytes_of(original, ".png"));
  CHECK(max_difference(dinov2::load_image(path), original) == 0.0);
  CHECK(max_difference(dinov2::load_image(path, false), original) == 0.0);
  CHECK(max_difference(dinov2::try_load_image(path).image, original) == 0.0);
}

TEST_CASE("a pixel limit below the image's pixel count refuses it, one at it does not",
          "[image][errors]") {
  const std::string png = bytes_of(random_image(37, 23), ".png");  // 851 pixels
  const DecodedImage below = dinov2::try_decode_image(png, ImageLimits{}.with_max_pixels(850));
  CHECK_THAT(below.error, ContainsSubstring("the header says 37x23 pixels (851), over the limit of "
                                            "850 (ImageLimits::max_pixels, --max-pixels)"));
  CHECK(below.image.empty());
  CHECK(dinov2::try_decode_image(png, ImageLimits{}.with_max_pixels(851)).ok());
  TempDir dir;
  const std::string path = dir.write("small.png", png);
  CHECK_THAT(input_error([&] { dinov2::load_image(path, ImageLimits{}.with_max_pixels(100)); }),
             ContainsSubstring("over the limit of 100 (ImageLimits::max_pixels"));
  // A format without a header parser (PPM) is held to the limit after decoding.
  if (cv::haveImageWriter(".ppm")) {
    const std::string ppm = bytes_of(random_image(37, 23), ".ppm");
    CHECK(!dinov2::image_header_size(ppm));
    CHECK_THAT(dinov2::try_decode_image(ppm, ImageLimits{}.with_max_pixels(850)).error,
               ContainsSubstring("the image has 37x23 pixels (851), over the limit of 850"));
    CHECK(dinov2::try_decode_image(ppm, ImageLimits{}.with_max_pixels(851)).ok());
  }
}

TEST_CASE("truncated JPEG and PNG data are refused as truncated", "[image][errors]") {
  const std::string jpeg = bytes_of(random_image(), ".jpg");
  const std::string png = bytes_of(random_image(), ".png");
  // What the decoders do with the same halves: they take them (the reason for the walk).
  const std::string half_jpeg = jpeg.substr(0, jpeg.size() / 2);
  CHECK(!cv::imdecode(std::vector<uchar>(half_jpeg.begin(), half_jpeg.end()), cv::IMREAD_COLOR)
             .empty());
  CHECK_THAT(dinov2::try_decode_image(half_jpeg).error,
             ContainsSubstring("truncated JPEG: the data ends after " +
                               std::to_string(half_jpeg.size()) + " bytes"));
  CHECK_THAT(dinov2::try_decode_image(jpeg.substr(0, jpeg.size() - 2)).error,
             ContainsSubstring("truncated JPEG"));
  CHECK_THAT(dinov2::try_decode_image(png.substr(0, png.size() / 2)).error,
             ContainsSubstring("truncated PNG: the data ends after " +
                               std::to_string(png.size() / 2) + " bytes, inside chunk 'IDAT'"));
  CHECK_THAT(dinov2::try_decode_image(png.substr(0, png.size() - 12)).error,
             ContainsSubstring("truncated PNG"));
  TempDir dir;
  const std::string path = dir.write("cut.jpg", half_jpeg);
  CHECK_THAT(input_error([&] { dinov2::load_image(path); }), ContainsSubstring("truncated JPEG"));
}

TEST_CASE("every prefix of an image is refused or decoded, never thrown", "[image][errors]") {
  const cv::Mat image = random_image(9, 5);
  for (const std::string ext : {".png", ".jpg", ".bmp", ".tiff", ".webp"}) {
    if (!cv::haveImageWriter(ext)) continue;
    const std::string bytes = bytes_of(image, ext);
    for (size_t n = 0; n < bytes.size(); ++n) {
      CAPTURE(ext, n);
      const std::string_view prefix = std::string_view(bytes).substr(0, n);
      DecodedImage d;
      REQUIRE_NOTHROW(d = dinov2::try_decode_image(prefix));
      CHECK(d.ok() != d.image.empty());
      if (ext == ".png" || ext == ".jpg") CHECK(!d.ok());
      REQUIRE_NOTHROW(dinov2::image_header_size(prefix));
    }
  }
}

TEST_CASE("empty data and data that is not an image are refused with the reason",
          "[image][errors]") {
  CHECK(dinov2::try_decode_image("").error == "empty data (0 bytes)");
  CHECK(dinov2::try_decode_image(std::string_view()).error == "empty data (0 bytes)");
  CHECK(dinov2::try_decode_image("hello, this is not an image\n").error ==
        "not an image in a supported format (it looks like text: \"hello, this is n\")");
  CHECK(dinov2::try_decode_image(raw("\x01\x02\x03\x00\xFE")).error ==
        "not an image in a supported format (it starts with bytes 01 02 03 00 FE)");
  CHECK_THAT(dinov2::try_decode_image(raw("\xFF\xD8\xFF\xD9")).error,
             ContainsSubstring("corrupt JPEG: no frame header"));
  CHECK_THAT(input_error([] { dinov2::decode_image("text"); }),
             ContainsSubstring("dinov2: cannot decode the image data: not an image"));
  TempDir dir;
  const std::string empty = dir.write("empty.jpg", "");
  CHECK(dinov2::try_load_image(empty).error == "empty file (0 bytes)");
  CHECK_THAT(input_error([&] { dinov2::load_image(empty); }),
             ContainsSubstring("'" + empty + "': empty file (0 bytes)"));
}

TEST_CASE("image_header_size reads the size each encoder wrote", "[image]") {
  const cv::Mat image = random_image(37, 23);
  const Size expected = Size({37, 23});
  CHECK(dinov2::image_header_size(bytes_of(image, ".jpg")) == expected);
  CHECK(dinov2::image_header_size(bytes_of(image, ".png")) == expected);
  CHECK(dinov2::image_header_size(bytes_of(image, ".bmp")) == expected);
  CHECK(dinov2::image_header_size(encode(image, ".jpg", {cv::IMWRITE_JPEG_PROGRESSIVE, 1})) ==
        expected);
  if (cv::haveImageWriter(".tiff")) {
    CHECK(dinov2::image_header_size(bytes_of(image, ".tiff")) == expected);
  } else {
    WARN("SKIPPED: this OpenCV cannot write TIFF");
  }
  if (cv::haveImageWriter(".webp")) {
    const std::string lossy = encode(image, ".webp", {cv::IMWRITE_WEBP_QUALITY, 90});
    const std::string lossless = encode(image, ".webp", {cv::IMWRITE_WEBP_QUALITY, 101});
    CHECK(lossy.substr(12, 4) == "VP8 ");
    CHECK(lossless.substr(12, 4) == "VP8L");
    CHECK(dinov2::image_header_size(lossy) == expected);
    CHECK(dinov2::image_header_size(lossless) == expected);
  } else {
    WARN("SKIPPED: this OpenCV cannot write WebP");
  }
  // Headers no OpenCV encoder writes, laid out by hand from the specifications.
  // WebP extended (VP8X): canvas width - 1 and height - 1 in 24 bits each, little-endian.
  const std::string vp8x = raw("RIFF\0\0\0\0WEBPVP8X\x0A\0\0\0\0\0\0\0") +
                           raw("\x0F\x27\x00\xFF\xFF\xFF");  // 9999 + 1, 16777215 + 1
  REQUIRE(vp8x.size() == 30);
  CHECK(dinov2::image_header_size(vp8x) == Size({10000, 16777216}));
  // OS/2 BMP (a 12-byte core header): 16-bit sizes.
  const std::string os2 = raw("BM\0\0\0\0\0\0\0\0\0\0\0\0\x0C\0\0\0\x25\0\x17\0\x01\0\x18\0");
  REQUIRE(os2.size() == 26);
  CHECK(dinov2::image_header_size(os2) == expected);
  // Windows BMP with a negative (top-down) height.
  const std::string topdown = raw("BM\0\0\0\0\0\0\0\0\0\0\0\0\x28\0\0\0\x25\0\0\0\xE9\xFF\xFF\xFF");
  REQUIRE(topdown.size() == 26);
  CHECK(dinov2::image_header_size(topdown) == expected);
  // Big-endian TIFF: one IFD at byte 8 with ImageWidth as SHORT and ImageLength as LONG.
  const std::string mm = raw("MM\0*\0\0\0\x08\0\x02") + raw("\x01\x00\0\x03\0\0\0\x01\0\x25\0\0") +
                         raw("\x01\x01\0\x04\0\0\0\x01\0\0\0\x17");
  REQUIRE(mm.size() == 34);
  CHECK(dinov2::image_header_size(mm) == expected);
  // Nothing to read.
  CHECK(!dinov2::image_header_size(""));
  CHECK(!dinov2::image_header_size("GIF89a"));
  CHECK(!dinov2::image_header_size(raw("\x89PNG\r\n\x1A\n")));
  CHECK(!dinov2::image_header_size(raw("MM\0*\xFF\xFF\xFF\xFF")));
}

TEST_CASE("image_header_size reads only inside every prefix of a header", "[image][errors]") {
  std::vector<std::string> headers = {jpeg_claiming(30000, 30000), png_claiming(20000, 20000),
                                      bytes_of(random_image(), ".bmp")};
  for (const std::string ext : {".tiff", ".webp"}) {
    if (cv::haveImageWriter(ext)) headers.push_back(bytes_of(random_image(), ext));
  }
  for (const auto& full : headers) {
    // An exact-size copy of each prefix, so that a read past it leaves the allocation (and
    // AddressSanitizer sees it).
    for (size_t n = 0; n <= std::min<size_t>(full.size(), 64); ++n) {
      CAPTURE(n);
      const std::vector<char> prefix(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
      const Size size = dinov2::image_header_size(std::string_view(prefix.data(), n));
      if (n < 8) CHECK(!size);
    }
  }
}

TEST_CASE("try_load_image refuses a FIFO, a folder and a missing file without opening them",
          "[image][errors]") {
  TempDir dir;
  const std::string fifo = (dir.path / "pipe.jpg").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // Opening the FIFO would block this test forever: no writer ever comes.
  CHECK(dinov2::try_load_image(fifo).error == "not a regular file (a FIFO); only files are read");
  CHECK(dinov2::try_load_image(dir.path.string()).error == "is a folder");
  CHECK(dinov2::try_load_image((dir.path / "missing.jpg").string()).error == "no such file");
  CHECK_THAT(input_error([&] { dinov2::load_image(fifo); }),
             ContainsSubstring("dinov2: cannot read the image file '" + fifo +
                               "': not a regular file (a FIFO)"));
  if (fs::exists("/dev/zero")) {
    CHECK(dinov2::try_load_image("/dev/zero").error ==
          "not a regular file (a character device); only files are read");
  }
}

TEST_CASE("a file over max_file_bytes is refused before it is read", "[image][errors]") {
  TempDir dir;
  const std::string png = bytes_of(random_image(), ".png");
  const std::string path = dir.write("small.png", png);
  const int64_t size = static_cast<int64_t>(png.size());
  const DecodedImage over =
      dinov2::try_load_image(path, ImageLimits{}.with_max_file_bytes(size - 1));
  CHECK(over.error == "the file has " + std::to_string(size) + " bytes, over the limit of " +
                          std::to_string(size - 1) +
                          " bytes (ImageLimits::max_file_bytes, --max-file-size)");
  CHECK(dinov2::try_load_image(path, ImageLimits{}.with_max_file_bytes(size)).ok());
  const std::string big = dir.write("big.jpg", std::string((std::size_t{1} << 20) + 1, 'x'));
  CHECK_THAT(input_error([&] {
               dinov2::load_image(big, ImageLimits{}.with_max_file_bytes(int64_t{1} << 20));
             }),
             ContainsSubstring("the file has 1048577 bytes, over the limit of 1 MiB "
                               "(ImageLimits::max_file_bytes, --max-file-size)"));
  // The same limit holds for bytes handed over directly.
  CHECK_THAT(dinov2::try_decode_image(png, ImageLimits{}.with_max_file_bytes(size - 1)).error,
             ContainsSubstring("the data has " + std::to_string(size) + " bytes, over the limit"));
}

TEST_CASE("ImageLimits defaults are Pillow's bomb limit and 1 GiB, and its setters chain",
          "[image]") {
  CHECK(ImageLimits{}.max_pixels == 178956970);  // PIL.Image.MAX_IMAGE_PIXELS
  CHECK(ImageLimits{}.max_file_bytes == 1073741824);
  const auto limits = ImageLimits{}.with_max_pixels(5).with_max_file_bytes(6);
  CHECK(limits.max_pixels == 5);
  CHECK(limits.max_file_bytes == 6);
}

TEST_CASE("Error::message is the message without its dinov2: prefix", "[errors]") {
  CHECK(InputError("dinov2: the image is empty").message() == "the image is empty");
  CHECK(InputError("the image is empty").message() == "the image is empty");
  CHECK(std::string(InputError("the image is empty").what()) == "dinov2: the image is empty");
  CHECK(dinov2::RuntimeError("dinov2:tight").message() == "tight");
}
