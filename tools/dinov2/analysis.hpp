// SPDX-License-Identifier: Apache-2.0
// Pieces shared by the analysis subcommands (pca, search, probe, classify, depth, segment):
// reading and preprocessing images with every failure reported, global image features, an
// ImageFolder dataset, output file names and small image conversions.
#pragma once

#include <ATen/core/Tensor.h>

#include <opencv2/core.hpp>

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "dinov2/model.hpp"
#include "dinov2/pipeline.hpp"
#include "dinov2/preprocess.hpp"

namespace dinov2::cli {

/// @brief The preprocessor for `recipe` with the normalisation stored in the model file.
Preprocessor model_preprocessor(const Model& model, const Recipe& recipe);

/// @brief The Pipeline options of the per-image commands (classify, depth, segment, pca): the
/// tool's image limits, and one image per forward pass, so that what is written for an image does
/// not depend on which other images were given with it.
PipelineOptions per_image_options();

/// @brief The decoded image at `path` (CV_8UC3 BGR, EXIF orientation applied, as the Pipeline
/// reads it), for pictures drawn over the input; throws InputError when it cannot be read.
cv::Mat read_bgr(const std::string& path);

/// @brief [H, W, 3] uint8 RGB copy of a BGR cv::Mat.
at::Tensor rgb_tensor(const cv::Mat& bgr);

/// @brief Global features of images, in input order, for the images that could be read.
struct Embeddings {
  std::vector<std::string> paths;  ///< the images embedded
  std::vector<int64_t> rows;       ///< their positions in the input list
  at::Tensor cls;                  ///< [N, D] float32 CPU
  at::Tensor pooled;               ///< [N, 2D] float32 CPU: cat(cls, mean patch)
  std::vector<std::pair<std::string, std::string>> failed;  ///< (path, reason)
};

/// @brief Runs the model on every image, `batch` images of one input size at a time, with a
/// progress display; unreadable images are reported and listed in `failed`.
Embeddings embed_images(const Model& model, const Preprocessor& pre,
                        const std::vector<std::string>& paths, int batch);

/// @brief An ImageFolder dataset: one subfolder per class (sorted by name), the images of each
/// found recursively (collect_inputs rules).
struct ImageFolder {
  std::vector<std::string> classes;
  std::vector<std::string> paths;
  std::vector<int64_t> labels;
};

/// @brief Scans `root`; throws InputError when it is not a folder or has fewer than
/// `min_classes` non-empty class folders.
ImageFolder scan_image_folder(const std::string& root, size_t min_classes = 2);

/// @brief Creates a folder (and its parents); throws InputError when that fails.
void make_folder(const std::string& path);

/// @brief `FOLDER/STEM SUFFIX` for an input path, with `_2`, `_3`... appended to the stem when two
/// inputs share a file stem (`used` remembers the stems given out).
std::string output_path(const std::string& folder, const std::string& input,
                        const std::string& suffix, std::set<std::string>& used);

/// @brief Resizes a float map [h, w] (bilinear) onto the crop box of the grid's original image;
/// pixels outside the box get `fill`.
/// @return [original_height, original_width] float32 CPU.
at::Tensor map_to_original(const at::Tensor& map, const PatchGrid& grid, float fill = 0.0f);

/// @brief Writes a cv::Mat with cv::imencode(".png") atomically; throws InputError on failure.
void write_png(const std::string& path, const cv::Mat& image);

/// Exit status of a run over `total` images of which `failed` could not be read: kExitSuccess,
/// or kExitInputsFailed after saying how many failed on stderr.
int images_exit_status(size_t failed, size_t total);

/// @brief The image paths the positional inputs name (collect_inputs); throws InputError
/// (kInvalidArgument) when they name none.
std::vector<std::string> require_images(const std::vector<std::string>& inputs);

/// @brief Runs `pipeline` over `paths` and calls `fn` with each image that ran, in input order;
/// each one that did not is reported on stderr as `dinov2: skipped PATH: REASON`.
/// @return images_exit_status of the run.
int for_each_image(const Pipeline& pipeline, const std::vector<std::string>& paths,
                   const std::function<void(const ImageFeatures&)>& fn);

/// @brief A table of counts with row and column labels, for confusion matrices.
std::string format_confusion(const at::Tensor& confusion, const std::vector<std::string>& names);

}  // namespace dinov2::cli
