// SPDX-License-Identifier: Apache-2.0
// WebDataset tar shards, read with libarchive: a listing pass over the headers, then a forward
// stream that hands out the image members in order (reopened when asked for an earlier one).
#include "dinov2/webdataset.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <list>
#include <mutex>
#include <set>
#include <utility>

#include "dinov2/error.hpp"

namespace dinov2 {

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

/// A member path split as WebDataset splits it: the key (up to the first '.' of the file name)
/// and the extension after that dot, lower-cased ("a/b.seg.png" -> "a/b", "seg.png").
std::pair<std::string, std::string> split_member(const std::string& member) {
  const size_t slash = member.rfind('/');
  const size_t name_begin = slash == std::string::npos ? 0 : slash + 1;
  const size_t dot = member.find('.', name_begin);
  if (dot == std::string::npos) return {member, ""};
  return {member.substr(0, dot), lower(member.substr(dot + 1))};
}

/// The last component of a multi-part extension: "seg.png" -> "png".
std::string last_extension(const std::string& ext) {
  const size_t dot = ext.rfind('.');
  return dot == std::string::npos ? ext : ext.substr(dot + 1);
}

bool contains(const std::vector<std::string>& set, const std::string& s) {
  return std::find(set.begin(), set.end(), s) != set.end();
}

struct ArchiveCloser {
  void operator()(archive* a) const { archive_read_free(a); }
};
using ArchivePtr = std::unique_ptr<archive, ArchiveCloser>;

std::string archive_message(archive* a) {
  const char* msg = archive_error_string(a);
  return msg != nullptr ? msg : "unknown libarchive error";
}

/// Opens `path` for reading as a tar, possibly compressed. Throws InputError when it cannot.
ArchivePtr open_archive(const std::string& path) {
  ArchivePtr a(archive_read_new());
  if (!a) throw InputError(fmt::format("dinov2: {}: libarchive could not start a reader", path));
  // The compressions named by is_tar_shard_name, each decoded in-process: not
  // archive_read_support_filter_all, which may hand hostile data to external programs (lrzip,
  // lzop, grzip) for formats the library was built without.
  archive_read_support_filter_none(a.get());
  archive_read_support_filter_gzip(a.get());
  archive_read_support_filter_bzip2(a.get());
  archive_read_support_filter_xz(a.get());
  archive_read_support_filter_zstd(a.get());
  archive_read_support_format_tar(a.get());
  if (archive_read_open_filename(a.get(), path.c_str(), 64 * 1024) != ARCHIVE_OK) {
    throw InputError(
        fmt::format("dinov2: {}: cannot open the tar shard: {}", path, archive_message(a.get())));
  }
  return a;
}

/// Reads the data of the current entry, at most `limit` bytes of it (a longer entry throws
/// InputError with `too_long`). Messages leave out the member's name, which the caller knows.
std::string read_entry(archive* a, int64_t declared, int64_t limit, const std::string& too_long) {
  if (declared > limit) throw InputError(too_long);
  std::string data;
  data.reserve(static_cast<size_t>(std::max<int64_t>(declared, 0)));
  char buf[64 * 1024];
  for (;;) {
    const la_ssize_t n = archive_read_data(a, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      throw InputError(fmt::format("dinov2: cannot read the member: {}", archive_message(a)));
    }
    data.append(buf, static_cast<size_t>(n));
    if (static_cast<int64_t>(data.size()) > limit) throw InputError(too_long);
  }
  if (declared >= 0 && static_cast<int64_t>(data.size()) != declared) {
    throw InputError(
        fmt::format("dinov2: the member holds {} of its {} bytes; the archive is cut "
                    "short",
                    data.size(), declared));
  }
  return data;
}

/// A shard's forward stream: positioned after entry `entry` (-1: nothing read yet).
struct Stream {
  std::mutex mutex;
  ArchivePtr archive;
  int64_t entry = -1;
};

/// The streams opened, oldest first: a run over thousands of shards (`--shard I/N` reads a few
/// members of every shard) would otherwise keep a file open per shard and run out of
/// descriptors. Past kMaxOpenStreams the oldest are closed; a closed stream opens again when its
/// shard is read again.
constexpr size_t kMaxOpenStreams = 64;
std::mutex g_streams_mutex;
std::list<std::weak_ptr<Stream>> g_streams;

/// Records that `mine` (whose mutex the caller holds) was opened, and closes the oldest others
/// beyond the limit. A stream in use on another thread (its mutex taken) is left open and
/// forgotten here; it is recorded again when it next opens.
void opened(const std::shared_ptr<Stream>& mine) {
  std::vector<std::shared_ptr<Stream>> victims;
  {
    std::lock_guard<std::mutex> lock(g_streams_mutex);
    g_streams.remove_if([&](const std::weak_ptr<Stream>& w) {
      const auto s = w.lock();
      return !s || s == mine;
    });
    g_streams.push_back(mine);
    while (g_streams.size() > kMaxOpenStreams) {
      if (auto s = g_streams.front().lock()) victims.push_back(std::move(s));
      g_streams.pop_front();
    }
  }
  for (const auto& v : victims) {
    std::unique_lock<std::mutex> lock(v->mutex, std::try_to_lock);
    if (!lock.owns_lock()) continue;
    v->archive.reset();
    v->entry = -1;
  }
}

}  // namespace

struct TarShard::State {
  std::string path;
  ImageLimits limits;
  std::vector<ShardSample> samples;
  std::vector<int64_t> entry_of;  // sample -> its entry number in the archive
  std::vector<ShardProblem> problems;
  std::string damage;

  std::shared_ptr<Stream> stream = std::make_shared<Stream>();
};

const std::vector<std::string>& TarShard::image_extensions() {
  static const std::vector<std::string> kExt = {"jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp"};
  return kExt;
}

const std::vector<std::string>& TarShard::side_extensions() {
  static const std::vector<std::string> kExt = {"json", "txt"};
  return kExt;
}

bool is_tar_shard_name(const std::string& path) {
  const std::string p = lower(path);
  for (const char* ext : {".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst"}) {
    if (ends_with(p, ext)) return true;
  }
  return false;
}

TarShard TarShard::open(const std::string& path, const ImageLimits& limits) {
  TarShard shard;
  shard.state_ = std::make_shared<State>();
  State& st = *shard.state_;
  st.path = path;
  st.limits = limits;
  ArchivePtr a = open_archive(path);
  std::set<std::string> members;
  std::map<std::string, std::map<std::string, std::string>> side;  // key -> ext -> text
  std::string last = "(none)";
  int64_t entry = -1;
  for (;;) {
    archive_entry* e = nullptr;
    const int r = archive_read_next_header(a.get(), &e);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN) {  // ARCHIVE_FAILED or ARCHIVE_FATAL: nothing after this is trusted
      if (entry < 0) {
        throw InputError(fmt::format("dinov2: {}: not a readable tar archive: {}", path,
                                     archive_message(a.get())));
      }
      st.damage = fmt::format(
          "the archive is damaged or cut short after member '{}' ({}); the "
          "members after it are lost",
          last, archive_message(a.get()));
      break;
    }
    ++entry;
    const char* name_ptr = archive_entry_pathname(e);
    const std::string member = name_ptr != nullptr ? name_ptr : "";
    last = member;
    if (archive_entry_filetype(e) != AE_IFREG) continue;  // folders, links, devices
    const auto [key, ext] = split_member(member);
    const std::string kind = last_extension(ext);
    const bool image = contains(image_extensions(), kind);
    const bool is_side = contains(side_extensions(), ext);
    if (!image && !is_side) continue;
    if (!members.insert(member).second) {
      st.problems.push_back({member, "a second member of this name; the first is used"});
      continue;
    }
    const int64_t size = archive_entry_size_is_set(e) ? archive_entry_size(e) : -1;
    if (image) {
      st.samples.push_back({member, key, size, {}});
      st.entry_of.push_back(entry);
      continue;
    }
    try {
      side[key][ext] =
          read_entry(a.get(), size, kMaxSideBytes,
                     fmt::format("a side file of {} bytes, over the {} kept", size, kMaxSideBytes));
    } catch (const InputError& err) {
      st.problems.push_back({member, err.message()});
    }
  }
  for (ShardSample& s : st.samples) {
    const auto it = side.find(s.key);
    if (it != side.end()) s.side = it->second;
  }
  return shard;
}

const std::string& TarShard::path() const { return state_->path; }
const std::vector<ShardSample>& TarShard::samples() const { return state_->samples; }
const std::vector<ShardProblem>& TarShard::problems() const { return state_->problems; }
const std::string& TarShard::damage() const { return state_->damage; }

std::string TarShard::read(std::size_t i) const {
  State& st = *state_;
  if (i >= st.samples.size()) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: {}: sample {} of {}", st.path, i, st.samples.size()));
  }
  const ShardSample& sample = st.samples[i];
  const int64_t limit = st.limits.max_file_bytes;
  const std::string too_long = fmt::format(
      "dinov2: the member is {} bytes, over the limit of {} bytes "
      "(ImageLimits::max_file_bytes, --max-file-size)",
      sample.size, limit);
  const int64_t target = st.entry_of[i];
  Stream& stream = *st.stream;
  std::lock_guard<std::mutex> lock(stream.mutex);
  if (!stream.archive || stream.entry >= target) {  // an earlier member: start again
    stream.archive.reset();
    stream.archive = open_archive(st.path);
    stream.entry = -1;
    opened(st.stream);
  }
  while (stream.entry < target) {
    archive_entry* e = nullptr;
    const int r = archive_read_next_header(stream.archive.get(), &e);
    if (r == ARCHIVE_EOF || r < ARCHIVE_WARN) {
      const std::string why =
          r == ARCHIVE_EOF ? "end of archive" : archive_message(stream.archive.get());
      stream.archive.reset();
      throw InputError(
          fmt::format("dinov2: the member can no longer be reached in {} ({})", st.path, why));
    }
    ++stream.entry;
  }
  try {
    return read_entry(stream.archive.get(), sample.size, limit, too_long);
  } catch (...) {
    stream.archive.reset();  // the stream's position is unknown now
    throw;
  }
}

ImageSource TarShard::source(std::size_t i) const {
  const std::string name = fmt::format("{}/{}", state_->path, state_->samples.at(i).member);
  return ImageSource::reader([shard = *this, i] { return shard.read(i); }, name);
}

std::vector<ImageSource> TarShard::sources() const {
  std::vector<ImageSource> out;
  out.reserve(samples().size());
  for (std::size_t i = 0; i < samples().size(); ++i) out.push_back(source(i));
  return out;
}

}  // namespace dinov2
