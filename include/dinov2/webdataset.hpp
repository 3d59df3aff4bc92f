// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief WebDataset tar shards (the format img2dataset writes) as Pipeline inputs: each image
/// member becomes an ImageSource whose bytes are read from the tar when the Pipeline decodes it,
/// so a shard of any size goes through a run with the Pipeline's bounded memory.
///
/// A shard is read with libarchive (plain tar, and tar inside gzip, bzip2, xz or zstd). Opening
/// lists it once, reading headers and skipping data (a seek in a plain tar); the members are then
/// read in order as the Pipeline asks for them.
///
/// @code
/// const auto shard = dinov2::TarShard::open("data/00000.tar");
/// for (const auto& s : shard.samples()) std::cout << s.key << " " << s.side["json"] << "\n";
/// pipeline.run(shard.sources(), [&](dinov2::ImageFeatures&& r) { ... });
/// @endcode
///
/// Samples follow WebDataset's convention: a member `dir/000123.jpg` has the key `dir/000123`
/// (its path up to the first '.' of the file name); `dir/000123.json` and `dir/000123.txt` are
/// that sample's side files, kept as text.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dinov2/image.hpp"
#include "dinov2/pipeline.hpp"

namespace dinov2 {

/// @brief One image member of a shard.
struct ShardSample {
  std::string member;  ///< the member's path in the tar, e.g. "000123.jpg"
  std::string key;     ///< WebDataset key, e.g. "000123"
  int64_t size = 0;    ///< bytes of the member
  /// @brief The sample's side files by extension ("json", "txt"), as text.
  std::map<std::string, std::string> side;
};

/// @brief Something in a shard that is not a readable sample, found while listing it.
struct ShardProblem {
  std::string member;  ///< the member at fault (empty for the archive as a whole)
  std::string reason;  ///< why, e.g. "a second member of this name; the first is used"
};

/// @brief A listed WebDataset shard. Cheap to copy; copies share one reader.
class TarShard {
 public:
  /// @brief Image members: files whose extension, in any letter case, is one of these.
  static const std::vector<std::string>& image_extensions();
  /// @brief Side files kept as a sample's metadata: `json` and `txt`.
  static const std::vector<std::string>& side_extensions();
  /// @brief The most bytes of one side file that are kept (1 MiB); a longer one is a problem.
  static constexpr int64_t kMaxSideBytes = int64_t{1} << 20;

  /// @brief Lists the shard at `path`. An image member over `limits.max_file_bytes` is still
  /// listed; reading it fails with the limit. Throws InputError when the file cannot be opened or
  /// is not a tar archive at all. A tar that is damaged or cut short part way is not an error:
  /// the samples before the damage are listed and damage() says what was lost.
  static TarShard open(const std::string& path, const ImageLimits& limits = {});

  /// @brief The path given to open().
  const std::string& path() const;
  /// @brief The image members, in archive order.
  const std::vector<ShardSample>& samples() const;
  /// @brief Members found while listing that give no sample: a repeated member name (the
  /// first is used), a side file over kMaxSideBytes, an unreadable side file.
  const std::vector<ShardProblem>& problems() const;
  /// @brief Empty when the listing reached the end of the archive; otherwise why it stopped,
  /// naming the last member read: every member after that point is lost.
  const std::string& damage() const;

  /// @brief Sample `i` as a Pipeline input named `path()/member`; its bytes are read from the
  /// tar when the Pipeline asks for them (a read error becomes that input's failure).
  ImageSource source(std::size_t i) const;
  /// @brief source(i) for every sample, in order.
  std::vector<ImageSource> sources() const;
  /// @brief Reads the bytes of sample `i` now. Throws InputError when the member cannot be read
  /// (cut short, over the limit, a damaged compressed stream).
  std::string read(std::size_t i) const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

/// @brief Whether `path` names a tar shard by its extension: `.tar`, `.tar.gz`, `.tgz`,
/// `.tar.bz2`, `.tar.xz` or `.tar.zst`, in any letter case.
bool is_tar_shard_name(const std::string& path);

}  // namespace dinov2
