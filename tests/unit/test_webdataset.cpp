// SPDX-License-Identifier: Apache-2.0
// WebDataset tar shards: listing (keys, side files, repeated members), reading members in and out
// of order, a cut-short archive losing only what follows the damage, compressed shards, limits,
// and a Pipeline over a shard's sources giving the features of the same images read from bytes.
// The shards are written here with libarchive's writer.
#include "dinov2/webdataset.hpp"

#include <ATen/ATen.h>
#include <archive.h>
#include <archive_entry.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "dinov2/error.hpp"
#include "dinov2/model.hpp"
#include "dinov2/pipeline.hpp"
#include "support.hpp"

namespace {

using dinov2::ImageSource;
using dinov2::InputError;
using dinov2::TarShard;
using dinov2::test::ContainsSubstring;
using dinov2::test::data_path;
using dinov2::test::message_of;
using dinov2::test::source_path;
using dinov2::test::TempDir;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string sample(const std::string& file) {
  return read_bytes(source_path("examples/data/" + file));
}

/// Writes `members` (name, bytes) as a pax tar, through `filter` ("none", "gzip", "zstd").
void write_tar(const std::string& path,
               const std::vector<std::pair<std::string, std::string>>& members,
               const std::string& filter = "none") {
  archive* a = archive_write_new();
  REQUIRE(archive_write_set_format_pax_restricted(a) == ARCHIVE_OK);
  if (filter == "gzip") REQUIRE(archive_write_add_filter_gzip(a) == ARCHIVE_OK);
  REQUIRE(archive_write_open_filename(a, path.c_str()) == ARCHIVE_OK);
  for (const auto& [name, bytes] : members) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, name.c_str());
    archive_entry_set_size(e, static_cast<la_int64_t>(bytes.size()));
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    REQUIRE(archive_write_header(a, e) == ARCHIVE_OK);
    REQUIRE(archive_write_data(a, bytes.data(), bytes.size()) ==
            static_cast<la_ssize_t>(bytes.size()));
    archive_entry_free(e);
  }
  REQUIRE(archive_write_close(a) == ARCHIVE_OK);
  archive_write_free(a);
}

/// A shard as img2dataset writes one: per sample an image, a .json and a .txt.
std::vector<std::pair<std::string, std::string>> shard_members() {
  return {{"000000.jpg", sample("coffee.jpg")},
          {"000000.json", R"({"caption": "coffee"})"},
          {"000000.txt", "a cup of coffee"},
          {"000001.png", sample("camera.png")},
          {"000001.txt", "a camera man"},
          {"notes.md", "ignored: not an image nor a side file"},
          {"sub/000002.seg.png", sample("chelsea.png")},
          {"000003.jpg", "not an image at all"},
          {"000000.jpg", sample("rocket.jpg")},  // a second member of the same name
          {"000004.JPG", sample("astronaut.jpg")}};
}

}  // namespace

TEST_CASE("a tar shard lists its images with WebDataset keys and side files", "[webdataset]") {
  const TempDir dir;
  const std::string path = dir.file("00000.tar");
  write_tar(path, shard_members());
  const TarShard shard = TarShard::open(path);
  REQUIRE(shard.samples().size() == 5);
  const auto& s = shard.samples();
  CHECK(s[0].member == "000000.jpg");
  CHECK(s[0].key == "000000");
  CHECK(s[0].size == static_cast<int64_t>(sample("coffee.jpg").size()));
  CHECK(s[0].side.at("json") == R"({"caption": "coffee"})");
  CHECK(s[0].side.at("txt") == "a cup of coffee");
  CHECK(s[1].key == "000001");
  CHECK(s[1].side.size() == 1);
  CHECK(s[2].key == "sub/000002");  // the key ends at the first '.' of the file name
  CHECK(s[2].side.empty());
  CHECK(s[3].member == "000003.jpg");
  CHECK(s[4].member == "000004.JPG");  // extensions in any letter case
  REQUIRE(shard.problems().size() == 1);
  CHECK(shard.problems()[0].member == "000000.jpg");
  CHECK_THAT(shard.problems()[0].reason, ContainsSubstring("the first is used"));
  CHECK(shard.damage().empty());
  CHECK(dinov2::is_tar_shard_name("a/B.TAR"));
  CHECK(dinov2::is_tar_shard_name("x.tar.gz"));
  CHECK_FALSE(dinov2::is_tar_shard_name("x.tar.png"));
}

TEST_CASE("tar members read in any order equal the bytes written", "[webdataset]") {
  const TempDir dir;
  for (const std::string filter : {"none", "gzip"}) {
    INFO(filter);
    const std::string path = dir.file(filter == "gzip" ? "s.tar.gz" : "s.tar");
    write_tar(path, shard_members(), filter);
    const TarShard shard = TarShard::open(path);
    REQUIRE(shard.samples().size() == 5);
    CHECK(shard.read(1) == sample("camera.png"));
    CHECK(shard.read(0) == sample("coffee.jpg"));  // an earlier member: the stream starts again
    CHECK(shard.read(4) == sample("astronaut.jpg"));
    CHECK(shard.read(2) == sample("chelsea.png"));
    const std::vector<ImageSource> sources = shard.sources();
    CHECK(sources[3].kind() == ImageSource::Kind::kReader);
    CHECK(sources[3].name() == path + "/000003.jpg");
    CHECK(sources[3].read() == "not an image at all");
    CHECK_THROWS_AS(shard.read(5), InputError);
  }
}

TEST_CASE("a cut-short tar keeps the members before the damage and says what was lost",
          "[webdataset]") {
  const TempDir dir;
  const std::string whole = dir.file("whole.tar");
  write_tar(whole, shard_members());
  const std::string bytes = read_bytes(whole);
  const TarShard full = TarShard::open(whole);
  // Cut inside the third image (sub/000002.seg.png): the first two samples stay whole.
  const std::string third = sample("chelsea.png");
  const size_t third_at = bytes.find(third.substr(0, 256));
  REQUIRE(third_at != std::string::npos);
  const std::string cut = dir.write("cut.tar", bytes.substr(0, third_at + third.size() / 2));
  const TarShard shard = TarShard::open(cut);
  INFO(shard.damage());
  CHECK_THAT(shard.damage(), ContainsSubstring("the members after it are lost"));
  REQUIRE(shard.samples().size() >= 2);
  CHECK(shard.samples().size() < full.samples().size());
  CHECK(shard.read(0) == sample("coffee.jpg"));
  CHECK(shard.read(1) == sample("camera.png"));
  const std::string last = shard.samples().back().member;
  CHECK_THAT(shard.damage(), ContainsSubstring(last));
  REQUIRE(shard.samples().size() == 3);  // the member cut in its data fails to read, with why
  CHECK(last == "sub/000002.seg.png");
  CHECK_THAT(message_of<InputError>([&] { shard.read(2); }), ContainsSubstring("runcated"));
}

TEST_CASE("a file that is not a tar, and a member over the size limit, are refused with why",
          "[webdataset]") {
  const TempDir dir;
  const std::string not_tar = dir.write("x.tar", std::string(3000, 'x'));
  CHECK_THAT(message_of<InputError>([&] { TarShard::open(not_tar); }),
             ContainsSubstring("Unrecognized archive format"));
  CHECK_THAT(message_of<InputError>([&] { TarShard::open(dir.file("missing.tar")); }),
             ContainsSubstring("cannot open the tar shard"));
  const std::string path = dir.file("s.tar");
  write_tar(path, shard_members());
  const TarShard shard = TarShard::open(path, dinov2::ImageLimits{}.with_max_file_bytes(1000));
  CHECK_THAT(message_of<InputError>([&] { shard.read(0); }),
             ContainsSubstring("over the limit of 1000 bytes"));
}

TEST_CASE("a Pipeline over a tar shard gives the features of the same images as bytes",
          "[webdataset][model]") {
  const auto model = dinov2::Model::load(data_path("model_s4.pt"));
  const dinov2::Pipeline pipeline(
      model, dinov2::Recipe::eval_center_crop(),
      dinov2::PipelineOptions{}.with_batch_size(2).with_decode_threads(2));
  const TempDir dir;
  const std::string path = dir.file("s.tar");
  write_tar(path, shard_members());
  const TarShard shard = TarShard::open(path);
  const auto from_tar = pipeline.run(shard.sources());
  std::vector<ImageSource> bytes;
  for (const char* f : {"coffee.jpg", "camera.png", "chelsea.png"}) {
    bytes.push_back(ImageSource::bytes(sample(f)));
  }
  bytes.push_back(ImageSource::bytes("not an image at all"));
  bytes.push_back(ImageSource::bytes(sample("astronaut.jpg")));
  const auto from_bytes = pipeline.run(bytes);
  REQUIRE(from_tar.size() == 5);
  for (std::size_t i = 0; i < 5; ++i) {
    INFO(i);
    CHECK(from_tar[i].name == shard.sources()[i].name());
    CHECK(from_tar[i].ok() == from_bytes[i].ok());
    if (from_tar[i].ok()) CHECK(at::equal(from_tar[i].cls, from_bytes[i].cls));
  }
  CHECK_THAT(from_tar[3].error, ContainsSubstring("not an image"));
}

TEST_CASE("reading a few members of many shards keeps a bounded number of files open",
          "[webdataset]") {
  const auto open_files = [] {
    return std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                         std::filesystem::directory_iterator());
  };
  const TempDir dir;
  const std::vector<std::pair<std::string, std::string>> members = {
      {"a.png", sample("camera.png")}, {"b.png", sample("chelsea.png")}};
  std::vector<TarShard> shards;
  for (int s = 0; s < 200; ++s) {
    const std::string path = dir.file("s" + std::to_string(s) + ".tar");
    write_tar(path, members);
    shards.push_back(TarShard::open(path));
  }
  const auto before = open_files();
  for (const TarShard& shard : shards) CHECK(shard.read(0) == sample("camera.png"));
  // Without the cap each shard would keep its stream: 200 more descriptors.
  CHECK(open_files() - before <= 64);
  // A shard whose stream was closed opens it again.
  CHECK(shards.front().read(1) == sample("chelsea.png"));
  CHECK(shards.front().read(0) == sample("camera.png"));
}
