// SPDX-License-Identifier: Apache-2.0
#include "dinov2/pipeline.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>
#include <new>
#include <thread>
#include <utility>

#include "detail/boundary.hpp"
#include "dinov2/error.hpp"
#include "dinov2/model.hpp"
#include "dinov2/opencv.hpp"

namespace dinov2 {

// ---------------------------------------------------------------------------------------------
// ImageSource

ImageSource ImageSource::file(std::string path) {
  ImageSource source;
  source.kind_ = Kind::kFile;
  source.name_ = std::move(path);
  return source;
}

std::vector<ImageSource> ImageSource::files(const std::vector<std::string>& paths) {
  std::vector<ImageSource> sources;
  sources.reserve(paths.size());
  for (const auto& path : paths) sources.push_back(file(path));
  return sources;
}

ImageSource ImageSource::bytes(std::string data, std::string name) {
  ImageSource source;
  source.kind_ = Kind::kBytes;
  source.name_ = std::move(name);
  source.data_ = std::make_shared<const std::string>(std::move(data));
  return source;
}

ImageSource ImageSource::pixels(ImageView view, std::shared_ptr<const void> owner,
                                std::string name) {
  ImageSource source;
  source.kind_ = Kind::kPixels;
  source.name_ = std::move(name);
  source.view_ = view;
  source.owner_ = std::move(owner);
  return source;
}

ImageSource ImageSource::reader(std::function<std::string()> read, std::string name) {
  if (!read) throw InputError::invalid_argument("dinov2: ImageSource::reader: no read function");
  ImageSource source;
  source.kind_ = Kind::kReader;
  source.name_ = std::move(name);
  source.read_ = std::move(read);
  return source;
}

std::string ImageSource::read() const { return kind_ == Kind::kReader ? read_() : data(); }

const std::string& ImageSource::data() const {
  static const std::string kEmpty;
  return data_ ? *data_ : kEmpty;
}

void check_token_bound(const Model& model, const Recipe& recipe) {
  const int64_t bound = recipe.token_bound();
  const int64_t limit = model.options().max_tokens;
  if (bound > limit) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: the recipe {} gives images up to {} patch tokens, over "
                    "the model's limit of {} (Options::max_tokens); choose a smaller "
                    "recipe",
                    recipe.to_string(), bound, limit));
  }
}

namespace {

/// One input after decoding and preprocessing: a batch of one image, or why it failed.
struct Prepared {
  Batch batch;
  std::string error;
};

Prepared prepare(const ImageSource& source, const Preprocessor& preprocessor,
                 const PipelineOptions& options) {
  Prepared out;
  try {
    if (source.kind() == ImageSource::Kind::kPixels) {
      out.batch = preprocessor(source.view());
      return out;
    }
    DecodedImage decoded;
    if (source.kind() == ImageSource::Kind::kFile) {
      decoded = try_load_image(source.name(), options.limits, options.apply_exif_orientation);
    } else if (source.kind() == ImageSource::Kind::kReader) {
      decoded = try_decode_image(source.read(), options.limits, options.apply_exif_orientation);
    } else {
      decoded = try_decode_image(source.data(), options.limits, options.apply_exif_orientation);
    }
    if (!decoded.ok()) {
      out.error = decoded.error;
      return out;
    }
    out.batch = preprocessor(image_view(decoded.image));
  } catch (const Error& e) {
    out.error = e.message();
  } catch (const std::bad_alloc&) {
    out.error = "out of memory while preprocessing the image";
  } catch (const std::exception& e) {
    out.error = detail::first_line(e.what());
  }
  return out;
}

/// Decodes and preprocesses inputs ahead of the model on worker threads, up to a limit the
/// consumer moves forward a window at a time, so that memory is bounded by the windows allowed.
/// Without workers, take() prepares on the calling thread.
class ReadAhead {
 public:
  ReadAhead(const std::vector<ImageSource>& inputs, const Preprocessor& preprocessor,
            const PipelineOptions& options)
      : inputs_(inputs), preprocessor_(preprocessor), options_(options) {
    for (int t = 0; t < options.decode_threads; ++t) workers_.emplace_back([this] { work(); });
  }
  ReadAhead(const ReadAhead&) = delete;
  ReadAhead& operator=(const ReadAhead&) = delete;
  ~ReadAhead() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (auto& worker : workers_) worker.join();
  }

  /// Lets the workers prepare every input below `limit`.
  void allow(std::size_t limit) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = std::max(limit_, std::min(limit, inputs_.size()));
    }
    work_cv_.notify_all();
  }

  /// Input `i` (below the limit allowed), once prepared.
  Prepared take(std::size_t i) {
    if (workers_.empty()) {
      Prepared p = prepare(inputs_[i], preprocessor_, options_);
      std::lock_guard<std::mutex> lock(mutex_);
      hold(1);
      return p;
    }
    std::unique_lock<std::mutex> lock(mutex_);
    ready_cv_.wait(lock, [&] { return ready_.count(i) != 0; });
    auto node = ready_.extract(i);
    return std::move(node.mapped());
  }

  /// The consumer is done with `n` inputs it took.
  void release(std::size_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    held_ -= n;
  }

  std::size_t peak() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return peak_;
  }

 private:
  void work() {
    for (;;) {
      std::size_t i = 0;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        work_cv_.wait(lock, [&] { return stop_ || next_ < limit_; });
        if (stop_) return;
        i = next_++;
      }
      Prepared p = prepare(inputs_[i], preprocessor_, options_);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        ready_.emplace(i, std::move(p));
        hold(1);
      }
      ready_cv_.notify_all();
    }
  }
  void hold(std::size_t n) {  // with mutex_ held
    held_ += n;
    peak_ = std::max(peak_, held_);
  }

  const std::vector<ImageSource>& inputs_;
  const Preprocessor& preprocessor_;
  const PipelineOptions& options_;
  mutable std::mutex mutex_;
  std::condition_variable work_cv_;
  std::condition_variable ready_cv_;
  std::size_t next_ = 0;   // the next input a worker takes
  std::size_t limit_ = 0;  // workers prepare inputs below this
  bool stop_ = false;
  std::map<std::size_t, Prepared> ready_;  // prepared, not yet taken
  std::size_t held_ = 0;                   // prepared and not yet released
  std::size_t peak_ = 0;
  std::vector<std::thread> workers_;
};

bool cancelled(const RunControl& control) {
  return control.cancel != nullptr && control.cancel->load(std::memory_order_relaxed);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Pipeline

Pipeline::Pipeline(const Model& model, Recipe recipe, PipelineOptions options)
    : model_(&model), preprocessor_(Preprocessor::for_model(model, recipe)), options_(options) {
  const auto bad = [](const std::string& what) {
    throw InputError::invalid_argument("dinov2: PipelineOptions: " + what);
  };
  if (options_.batch_size < 1)
    bad(fmt::format("batch_size is {}; use 1 or more", options_.batch_size));
  if (options_.window < 0)
    bad(fmt::format("window is {}; use 0 (the default) or more", options_.window));
  if (options_.decode_threads < 0) {
    bad(fmt::format("decode_threads is {}; use 0 (decode on the calling thread) or more",
                    options_.decode_threads));
  }
  if (options_.limits.max_pixels < 1 || options_.limits.max_file_bytes < 1) {
    bad(fmt::format("limits.max_pixels is {} and limits.max_file_bytes {}; both must be positive",
                    options_.limits.max_pixels, options_.limits.max_file_bytes));
  }
  if (options_.layers && !model.info().all_methods()) {
    // Refused here rather than as a failure of every image.
    bad(
        fmt::format("layers is set, but the model is {}, which holds the forward pass only; "
                    "load the TorchScript (.pt) export of the model for intermediate layers",
                    model.info().backend == Backend::kOpenVINO ? "an ONNX export (OpenVINO)"
                                                               : "an AOTInductor package"));
  }
  if (options_.window == 0) {
    options_.window = recipe.kind() == Recipe::Kind::kPatchAligned
                          ? 4 * int64_t{options_.batch_size}
                          : int64_t{options_.batch_size};
  }
  check_token_bound(model, recipe);
}

PipelineSummary Pipeline::run(const std::vector<ImageSource>& inputs,
                              const std::function<void(ImageFeatures&&)>& on_result,
                              const RunControl& control) const {
  PipelineSummary summary;
  const std::size_t n = inputs.size();
  const auto window = static_cast<std::size_t>(options_.window);
  const auto batch_size = static_cast<std::size_t>(options_.batch_size);
  ReadAhead ahead(inputs, preprocessor_, options_);
  for (std::size_t begin = 0; begin < n && !summary.cancelled; begin += window) {
    if (cancelled(control)) {
      summary.cancelled = true;
      break;
    }
    const std::size_t end = std::min(n, begin + window);
    ahead.allow(end + window);  // the next window decodes while this one runs
    std::vector<Prepared> prepared;
    std::vector<ImageFeatures> results(end - begin);
    for (std::size_t i = begin; i < end; ++i) {
      prepared.push_back(ahead.take(i));
      ImageFeatures& r = results[i - begin];
      r.index = i;
      r.name = inputs[i].name();
      r.error = prepared.back().error;
    }
    // Batches share an input size: group by size in order of first appearance, then slice.
    std::vector<std::vector<std::size_t>> groups;
    std::map<std::pair<int64_t, int64_t>, std::size_t> group_of;
    for (std::size_t k = 0; k < prepared.size(); ++k) {
      if (!results[k].ok()) continue;
      const at::Tensor& px = prepared[k].batch.pixels;
      const auto key = std::make_pair(px.size(2), px.size(3));
      const auto it = group_of.emplace(key, groups.size()).first;
      if (it->second == groups.size()) groups.emplace_back();
      groups[it->second].push_back(k);
    }
    for (const auto& group : groups) {
      for (std::size_t first = 0; first < group.size() && !summary.cancelled; first += batch_size) {
        if (cancelled(control)) {
          summary.cancelled = true;
          break;
        }
        const std::size_t last = std::min(group.size(), first + batch_size);
        Batch batch;
        std::vector<at::Tensor> pixels;
        for (std::size_t m = first; m < last; ++m) {
          pixels.push_back(prepared[group[m]].batch.pixels);
          batch.grids.push_back(prepared[group[m]].batch.grids.at(0));
        }
        batch.pixels = pixels.size() == 1 ? pixels[0] : at::cat(pixels, 0);
        pixels.clear();
        for (std::size_t m = first; m < last; ++m) prepared[group[m]].batch.pixels = at::Tensor();
        Features features;
        LayerFeatures layers;
        try {
          if (options_.layers) {
            layers = model_->intermediate_layers(batch, *options_.layers);
          } else {
            features = model_->extract_features(batch).cpu();
          }
        } catch (const InputError& e) {  // this batch's images, not the model, are at fault
          for (std::size_t m = first; m < last; ++m) results[group[m]].error = e.message();
          continue;
        }
        for (std::size_t m = first; m < last; ++m) {
          const auto b = static_cast<int64_t>(m - first);
          ImageFeatures& r = results[group[m]];
          r.grid = batch.grids.at(static_cast<std::size_t>(b));
          if (options_.layers) {
            r.layers.indices = layers.indices;
            r.layers.grids = {r.grid};
            for (std::size_t e = 0; e < layers.size(); ++e) {
              r.layers.patches.push_back(layers.patches[e].narrow(0, b, 1).cpu());
              r.layers.cls.push_back(layers.cls[e].narrow(0, b, 1).cpu());
            }
            continue;
          }
          r.cls = features.cls[b];
          r.registers = features.registers[b];
          if (options_.patches) r.patches = features.patches[b];
        }
      }
    }
    ahead.release(end - begin);
    prepared.clear();
    if (summary.cancelled) break;  // this window's results are incomplete: none is delivered
    for (auto& r : results) {
      summary.failed += r.ok() ? 0 : 1;
      ++summary.done;
      on_result(std::move(r));
    }
    if (control.on_progress) control.on_progress({summary.done, summary.failed, n});
  }
  summary.peak_buffered = ahead.peak();
  return summary;
}

std::vector<ImageFeatures> Pipeline::run(const std::vector<ImageSource>& inputs) const {
  std::vector<ImageFeatures> results;
  results.reserve(inputs.size());
  run(inputs, [&](ImageFeatures&& r) { results.push_back(std::move(r)); });
  return results;
}

}  // namespace dinov2
