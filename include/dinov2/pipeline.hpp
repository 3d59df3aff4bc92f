// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Pipeline: images in, features out. A list of image files, encoded buffers or decoded
/// pixels goes through decode -> integrity and size checks -> preprocessing -> grouping by input
/// size -> batching -> the model, with decoding on worker threads that overlap the forward pass,
/// and comes back in input order: per input its features, or why it failed, as a value.
///
/// This is what `dinov2 extract` runs. OpenCV-free: the decoding is compiled into the library,
/// and dinov2/opencv.hpp turns a cv::Mat into an ImageSource.
///
/// @code
/// const auto model = dinov2::Model::load("dinov2_vits14.pt");
/// const dinov2::Pipeline pipeline(model, dinov2::Recipe::eval_center_crop());
/// for (const auto& r : pipeline.run(dinov2::ImageSource::files({"cat.jpg", "broken.png"}))) {
///   if (r.ok()) std::cout << r.name << ": " << r.cls.sizes() << "\n";   // [D]
///   else std::cerr << "skipped " << r.name << ": " << r.error << "\n";
/// }
/// @endcode
///
/// Memory: at most two windows of preprocessed images are held at a time (the one being run and
/// the one being decoded), whatever the length of the input list, and results are handed to the
/// caller as they are made, so a run over a million files stays flat when the caller does not
/// keep them (the callback form of run()).
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dinov2/features.hpp"
#include "dinov2/image.hpp"
#include "dinov2/patch_grid.hpp"
#include "dinov2/preprocess.hpp"

namespace dinov2 {

class Model;

/// @brief One input of a Pipeline: an image file, the encoded bytes of one, or decoded pixels.
/// A cheap value to copy (the bytes and pixels are shared, not copied).
class ImageSource {
 public:
  /// @brief What the source holds.
  enum class Kind {
    kFile,    ///< a path, read and decoded under PipelineOptions::limits
    kBytes,   ///< an encoded image (JPEG, PNG, ...), decoded under the same limits
    kPixels,  ///< decoded pixels (an ImageView) kept alive by an owner
    kReader,  ///< encoded data that a function reads when the Pipeline decodes the input
  };
  /// @brief An image file; name() is the path.
  static ImageSource file(std::string path);
  /// @brief Each path as file(), in order.
  static std::vector<ImageSource> files(const std::vector<std::string>& paths);
  /// @brief Encoded image data, e.g. read from an archive or received over a network; `name`
  /// labels it in results and failure reasons.
  static ImageSource bytes(std::string data, std::string name = "");
  /// @brief Encoded image data read by `read` on a decode worker when the Pipeline reaches the
  /// input, so that only the inputs being decoded are in memory (e.g. the members of a tar
  /// shard, dinov2/webdataset.hpp). `read` may be called from a worker thread; an exception it
  /// throws becomes the input's failure. The result is decoded under the Pipeline's limits.
  static ImageSource reader(std::function<std::string()> read, std::string name);
  /// @brief Decoded pixels: `view` must stay valid as long as `owner` lives (the Pipeline keeps
  /// a reference to `owner` until the image is preprocessed). dinov2/opencv.hpp has
  /// image_source(cv::Mat), which does this for a cv::Mat.
  static ImageSource pixels(ImageView view, std::shared_ptr<const void> owner,
                            std::string name = "");

  /// @brief The kind of input.
  Kind kind() const noexcept { return kind_; }
  /// @brief The path of a file; the name given to bytes() or pixels().
  const std::string& name() const noexcept { return name_; }
  /// @brief The encoded data of a kBytes source (empty otherwise).
  const std::string& data() const;
  /// @brief The pixels of a kPixels source.
  const ImageView& view() const noexcept { return view_; }
  /// @brief The encoded data: data() for kBytes, what the function returns for kReader.
  std::string read() const;

 private:
  Kind kind_ = Kind::kFile;
  std::string name_;
  std::shared_ptr<const std::string> data_;
  ImageView view_;
  std::shared_ptr<const void> owner_;
  std::function<std::string()> read_;
};

/// @brief How a Pipeline reads and batches. A plain struct: set fields or chain the setters.
struct PipelineOptions {
  /// @brief Images per forward pass (the largest batch; a window's shape groups may give smaller
  /// ones). Default 8.
  int batch_size = 8;
  /// @brief Inputs read, grouped by input size and batched together. Batches never cross a
  /// window, so results depend only on the input list and these options, not on timing. 0 (the
  /// default): batch_size for recipes with one input size (square, resize, eval_center_crop),
  /// 4 x batch_size for patch_aligned, whose images of other aspect ratios must find partners.
  int64_t window = 0;
  /// @brief Worker threads that decode and preprocess the next window while the model runs the
  /// current one (each uses LibTorch's intra-op pool as well). 0 decodes on the calling thread,
  /// with no overlap. Default 1.
  int decode_threads = 1;
  /// @brief Limits for every file and encoded buffer (dinov2/image.hpp).
  ImageLimits limits;
  /// @brief Turn photos upright as their EXIF orientation says (OpenCV's default); false keeps
  /// the stored pixel order, as PIL's Image.open does. Default true.
  bool apply_exif_orientation = true;
  /// @brief Keep the patch tokens in the results; false drops them as soon as a batch is run
  /// (less memory when only CLS embeddings are wanted). Default true.
  bool patches = true;
  /// @brief Run Model::intermediate_layers with this request instead of extract_features: each
  /// result then holds ImageFeatures::layers (what a head reads, e.g. `head.layers()`) and no
  /// cls, registers or patches. The Pipeline constructor refuses it (InputError,
  /// kInvalidArgument) for a model that cannot run intermediate_layers (ModelInfo::all_methods,
  /// an AOTInductor package). Unset by default.
  std::optional<LayerRequest> layers;

  /// @brief Sets batch_size.
  PipelineOptions& with_batch_size(int n) {
    batch_size = n;
    return *this;
  }
  /// @brief Sets window.
  PipelineOptions& with_window(int64_t n) {
    window = n;
    return *this;
  }
  /// @brief Sets decode_threads.
  PipelineOptions& with_decode_threads(int n) {
    decode_threads = n;
    return *this;
  }
  /// @brief Sets limits.
  PipelineOptions& with_limits(const ImageLimits& l) {
    limits = l;
    return *this;
  }
  /// @brief Sets apply_exif_orientation.
  PipelineOptions& with_exif_orientation(bool on) {
    apply_exif_orientation = on;
    return *this;
  }
  /// @brief Sets patches.
  PipelineOptions& with_patches(bool on) {
    patches = on;
    return *this;
  }
  /// @brief Sets layers.
  PipelineOptions& with_layers(LayerRequest request) {
    layers = std::move(request);
    return *this;
  }
};

/// @brief The result for one input: its features, or the reason it failed.
///
/// The tensors are float32 on the CPU, views into the batch the image was run in (no copy was
/// made to split the batch); they stay valid as long as the result (or a copy of a tensor) lives.
struct ImageFeatures {
  std::size_t index = 0;  ///< position in the input list
  std::string name;       ///< ImageSource::name()
  /// @brief Empty when the image was run; otherwise why it was not, without a "dinov2: " prefix,
  /// e.g. "not an image (no decoder recognised the data)".
  std::string error;
  PatchGrid grid;        ///< the patch grid and where it lies in the original image
  at::Tensor cls;        ///< [D]
  at::Tensor registers;  ///< [R, D] (R = 0 or 4)
  at::Tensor patches;    ///< [h, w, D]; undefined when PipelineOptions::patches is false
  /// @brief With PipelineOptions::layers: the requested block outputs of this image as a batch
  /// of one (patches [1, h, w, D], cls [1, D]), ready for a head; empty otherwise.
  LayerFeatures layers;
  /// @brief Whether the image was run.
  bool ok() const noexcept { return error.empty(); }
};

/// @brief Where a run stands, given to the progress callback after every window.
struct PipelineProgress {
  std::size_t done = 0;    ///< inputs whose result has been delivered, failures included
  std::size_t failed = 0;  ///< of those, failures
  std::size_t total = 0;   ///< inputs in the run
};

/// @brief Optional hooks of one run: a progress callback and a cancel flag.
struct RunControl {
  /// @brief Called on the calling thread after each window's results were delivered.
  std::function<void(const PipelineProgress&)> on_progress;
  /// @brief When it becomes true (from any thread), the run stops at the next batch: results
  /// already delivered stay delivered, no more are made, and run() returns with `cancelled` set.
  const std::atomic<bool>* cancel = nullptr;
};

/// @brief What a run did.
struct PipelineSummary {
  std::size_t done = 0;    ///< results delivered, failures included
  std::size_t failed = 0;  ///< failures among them
  bool cancelled = false;  ///< stopped by RunControl::cancel before the end
  /// @brief The most preprocessed images held at once (decoded ahead and waiting for the model):
  /// at most 2 x window, however many inputs the run has.
  std::size_t peak_buffered = 0;
};

/// @brief Throws InputError (kInvalidArgument) when `recipe` can give an image more patch tokens
/// (Recipe::token_bound) than `model` takes (Options::max_tokens), e.g. resize(14000,14000): a
/// check to make before any image is read, as the Pipeline constructor does.
void check_token_bound(const Model& model, const Recipe& recipe);

/// @brief Runs a Model over lists of images (see the file comment).
///
/// Preprocessing comes from the model: Preprocessor::for_model(model, recipe). The Model must
/// outlive the Pipeline. run() is const and may be called from several threads at once.
///
/// Failures: an input that cannot be read, decoded or preprocessed, or that the model refuses as
/// input (InputError), becomes a result with `error` set; the run goes on. A failure of the model
/// itself (Error of another kind, e.g. out of memory), or an exception thrown by the callback,
/// stops the run: the worker threads are joined and the exception propagates.
class Pipeline {
 public:
  /// @brief A pipeline for `model` under `recipe`. Throws InputError (kInvalidArgument) for a
  /// batch_size or window below 1 (window 0 means the default), negative decode_threads, or a
  /// recipe that can give more tokens than the model takes (Options::max_tokens).
  explicit Pipeline(const Model& model, Recipe recipe = Recipe::square(),
                    PipelineOptions options = {});

  /// @brief The preprocessing applied (recipe and the model's normalisation).
  const Preprocessor& preprocessor() const noexcept { return preprocessor_; }
  /// @brief The options, with window resolved.
  const PipelineOptions& options() const noexcept { return options_; }

  /// @brief Runs every input and hands each result, in input order, to `on_result` on the calling
  /// thread, as soon as its window has run.
  PipelineSummary run(const std::vector<ImageSource>& inputs,
                      const std::function<void(ImageFeatures&&)>& on_result,
                      const RunControl& control = {}) const;
  /// @brief Runs every input and returns the results in input order (they are all held in
  /// memory; use the callback form for long lists).
  std::vector<ImageFeatures> run(const std::vector<ImageSource>& inputs) const;

 private:
  const Model* model_;
  Preprocessor preprocessor_;
  PipelineOptions options_;
};

}  // namespace dinov2
