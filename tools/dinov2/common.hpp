// SPDX-License-Identifier: Apache-2.0
// Pieces shared by the subcommands of the `dinov2` tool: the model options, the input list
// (files, folders, @lists), reading images with a reason for every failure, recipe names, JSON
// output and the progress display.
#pragma once

#include <ATen/core/Tensor.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dinov2/image.hpp"
#include "dinov2/model.hpp"
#include "dinov2/opencv.hpp"
#include "dinov2/options.hpp"
#include "dinov2/preprocess.hpp"

namespace dinov2::cli {

/// @brief The image limits in force for this process, which read_image applies: the library's
/// defaults, or --max-pixels and --max-file-size (set by ModelArgs::load; docs/RELIABILITY.md).
ImageLimits& input_limits();

/// @brief The most --threads the tool takes: 4 per core this machine has. More only oversubscribes
/// the cores, and tens of thousands make LibTorch's pool fail to start its threads.
int max_threads();

/// @brief The options that choose and place a model: --model (and --architecture for weights of
/// a reduced depth), --device, --dtype, --kernels, --threads, and
/// the input limits --max-pixels and --max-file-size.
struct ModelArgs {
  std::string path;
  std::string architecture;
  std::string device = "cpu";
  std::string dtype = "float32";
  std::string kernels = "auto";
  int threads = 0;
  int64_t max_pixels = ImageLimits{}.max_pixels;
  int64_t max_file_mib = ImageLimits{}.max_file_bytes >> 20;

  /// @brief Adds the four options to a subcommand (--model is required).
  void add_to(CLI::App* app);
  /// @brief The Options these arguments describe.
  Options options() const;
  /// @brief Loads the model; throws dinov2::Error (ModelFileError, DeviceError). Warns once on
  /// stderr, with a measured slowdown, when bfloat16 runs on a CPU that emulates it.
  Model load() const;
};

/// @brief One line on the model's execution: variant, device, the compute dtype and why, and the
/// fused kernels, for the start of a long run (after the CPU line of dinov2::cpu_info).
std::string describe_model(const Model& model);
/// @brief The same facts for output metadata: "cpu" (an object), "libtorch", "compute_dtype",
/// "requested_dtype", "dtype_reason", "fused_layers", "fusion".
nlohmann::json runtime_metadata(const Model& model);

/// @brief The names --recipe accepts: square518, eval224, aligned, or any text Recipe::parse
/// reads ("square(448)", "patch_aligned(1036,8192)", ...).
Recipe parse_recipe(const std::string& name);
/// @brief Throws InputError naming the first row of `rows` ([N, ...]) that holds NaN or Inf,
/// counted from `first_row`, in `what` (e.g. "the gallery g.safetensors"): such a row would give
/// NaN scores that rank as nothing.
void check_finite_rows(const at::Tensor& rows, int64_t first_row, const std::string& what);
/// @brief Help text listing the recipe names.
const char* recipe_help();

/// @brief Adds the positional, required image inputs (files, folders or @lists).
void add_image_inputs(CLI::App* app, std::vector<std::string>& inputs,
                      const std::string& type_name = "IMAGE");
/// @brief Adds the required --output/-o folder option of the commands that write pictures.
void add_output_folder(CLI::App* app, std::string& output);
/// @brief Adds the required --head option: an existing file, described by `help`.
void add_head_file(CLI::App* app, std::string& head, const std::string& help,
                   const std::string& type_name = "FILE");

/// @brief Whether a file name has an image extension (jpg, jpeg, png, bmp, tif, tiff, webp;
/// case-insensitive). Used when walking folders.
bool has_image_extension(const std::string& path);

/// @brief The paths of an @list's text: one a line, trimmed; blank lines and lines starting with
/// '#' skipped.
std::vector<std::string> list_lines(const std::string& text);

/// @brief Expands command-line inputs into a sorted list of unique image paths: a file is taken
/// as it is (whatever its extension), a folder is walked recursively for files with an image
/// extension, `@FILE` reads one path per line (blank lines and lines starting with '#' skipped;
/// relative paths are relative to the current folder, each line expanded like an argument).
/// Paths that do not exist are kept, so that reading them fails with a reason like any other
/// bad input. A walk enters each real folder once: a symbolic link back to a folder already
/// walked (a loop, or a second way in) is reported on stderr and not followed. Throws
/// InputError for an unreadable @list or folder, or an @list that is not a regular file.
std::vector<std::string> collect_inputs(const std::vector<std::string>& args);

/// @brief A decoded image (owning its pixels) or the reason it could not be read.
using ImageFile = DecodedImage;

/// @brief dinov2::try_load_image under input_limits(): never throws for a bad file, gives the
/// reason instead.
ImageFile read_image(const std::string& path, bool apply_exif_orientation = true);

/// @brief Serialises JSON for output (compact when indent < 0); bytes that are not UTF-8
/// (possible in file names) become U+FFFD instead of failing.
std::string dump_json(const nlohmann::json& value, int indent = -1);

/// @brief Deletes the folder `path` and everything in it, best effort: never throws. Calls the
/// throwing std::filesystem::remove_all: a CUDA LibTorch (2.11.0+cu130 on an H200 machine,
/// 2026-12-04) exports its own std::filesystem symbols, and there the error_code overload jumped
/// to address 0 while the throwing one worked (docs/BENCHMARKS.md, GPU).
void remove_tree(const std::string& path) noexcept;

/// @brief Progress of a long run on stderr: a redrawn bar with images/s and ETA when stderr is a
/// terminal; otherwise nothing until summary().
class Progress {
 public:
  /// @param total items to process in this run; @param already items done by an earlier run.
  Progress(int64_t total, int64_t already, std::string unit = "images");
  /// @brief Records `n` more items done and redraws the bar (at most 10 times a second).
  void advance(int64_t n);
  /// @brief Prints a line above the bar (or plainly when stderr is not a terminal).
  void message(const std::string& line);
  /// @brief Clears the bar; returns "N images in T s (R images/s)" for this run.
  std::string finish();
  /// @brief Whether stderr is a terminal.
  bool interactive() const { return tty_; }

 private:
  void draw(bool force);
  using Clock = std::chrono::steady_clock;
  int64_t total_;
  int64_t done_;
  int64_t already_;
  std::string unit_;
  bool tty_;
  bool drawn_ = false;
  Clock::time_point start_;
  Clock::time_point last_draw_;
};

/// @brief Splits "I/N" into {I, N}; throws InputError (kInvalidArgument) unless 0 <= I < N.
std::pair<int64_t, int64_t> parse_shard(const std::string& text);

}  // namespace dinov2::cli
