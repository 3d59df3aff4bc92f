// SPDX-License-Identifier: Apache-2.0
#include "analysis.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <filesystem>
#include <iostream>

#include "commands.hpp"
#include "common.hpp"
#include "dinov2/error.hpp"
#include "dinov2/io.hpp"
#include "dinov2/opencv.hpp"
#include "dinov2/pipeline.hpp"

namespace dinov2::cli {

namespace fs = std::filesystem;

Preprocessor model_preprocessor(const Model& model, const Recipe& recipe) {
  check_token_bound(model, recipe);
  return Preprocessor::for_model(model, recipe);
}

PipelineOptions per_image_options() {
  return PipelineOptions{}.with_batch_size(1).with_limits(input_limits());
}

cv::Mat read_bgr(const std::string& path) {
  ImageFile file = read_image(path);
  if (!file.ok()) throw InputError(fmt::format("dinov2: cannot read {}: {}", path, file.error));
  return file.image;
}

at::Tensor rgb_tensor(const cv::Mat& bgr) {
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return at::from_blob(rgb.data, {rgb.rows, rgb.cols, 3}, at::kByte).clone();
}

Embeddings embed_images(const Model& model, const Preprocessor& pre,
                        const std::vector<std::string>& paths, int batch) {
  const Pipeline pipeline(model, pre.recipe(),
                          PipelineOptions{}.with_batch_size(batch).with_limits(input_limits()));
  Embeddings out;
  std::vector<at::Tensor> cls, pooled;
  Progress progress(static_cast<int64_t>(paths.size()), 0);
  RunControl control;
  std::size_t shown = 0;
  control.on_progress = [&](const PipelineProgress& p) {
    progress.advance(static_cast<int64_t>(p.done - shown));
    shown = p.done;
  };
  pipeline.run(
      ImageSource::files(paths),
      [&](ImageFeatures&& r) {
        if (!r.ok()) {
          progress.message(fmt::format("dinov2: skipped {}: {}", r.name, r.error));
          out.failed.emplace_back(r.name, r.error);
          return;
        }
        out.paths.push_back(r.name);
        out.rows.push_back(static_cast<int64_t>(r.index));
        // Copies: a view would keep its whole batch's patch features alive.
        cls.push_back(r.cls.clone());
        pooled.push_back(at::cat({r.cls, r.patches.mean({0, 1})}));
      },
      control);
  const std::string timing = progress.finish();
  if (!progress.interactive()) std::cerr << "dinov2: features of " << timing << "\n";
  const int64_t d = model.info().embed_dim;
  out.cls = cls.empty() ? at::empty({0, d}, at::kFloat) : at::stack(cls);
  out.pooled = pooled.empty() ? at::empty({0, 2 * d}, at::kFloat) : at::stack(pooled);
  return out;
}

ImageFolder scan_image_folder(const std::string& root, size_t min_classes) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    throw InputError(fmt::format(
        "dinov2: --data {} is not a folder; give an ImageFolder dataset (one subfolder of "
        "images per class)",
        root));
  }
  std::vector<std::string> subfolders;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_directory(ec)) subfolders.push_back(it->path().filename().string());
  }
  if (ec) throw InputError(fmt::format("dinov2: cannot list {} ({})", root, ec.message()));
  std::sort(subfolders.begin(), subfolders.end());
  ImageFolder data;
  for (const auto& name : subfolders) {
    const auto files = collect_inputs({(fs::path(root) / name).string()});
    if (files.empty()) continue;
    const auto label = static_cast<int64_t>(data.classes.size());
    data.classes.push_back(name);
    for (const auto& f : files) {
      data.paths.push_back(f);
      data.labels.push_back(label);
    }
  }
  if (data.classes.size() < min_classes) {
    throw InputError(fmt::format(
        "dinov2: {} has {} class folder(s) with images; an ImageFolder dataset needs at least "
        "{} (one subfolder of images per class)",
        root, data.classes.size(), min_classes));
  }
  return data;
}

void make_folder(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec || !fs::is_directory(path)) {
    throw InputError(fmt::format("dinov2: cannot create the output folder {} ({})", path,
                                 ec ? ec.message() : "a file of that name exists"));
  }
}

std::string output_path(const std::string& folder, const std::string& input,
                        const std::string& suffix, std::set<std::string>& used) {
  const std::string stem = fs::path(input).stem().string();
  std::string name = stem;
  for (int n = 2; !used.insert(name).second; ++n) name = fmt::format("{}_{}", stem, n);
  return (fs::path(folder) / (name + suffix)).string();
}

at::Tensor map_to_original(const at::Tensor& map, const PatchGrid& grid, float fill) {
  const int64_t x0 = std::llround(grid.crop_x), y0 = std::llround(grid.crop_y);
  const int64_t x1 =
      std::min<int64_t>(grid.original_width, std::llround(grid.crop_x + grid.crop_width));
  const int64_t y1 =
      std::min<int64_t>(grid.original_height, std::llround(grid.crop_y + grid.crop_height));
  at::Tensor out = at::full({grid.original_height, grid.original_width}, fill, at::kFloat);
  if (x1 <= x0 || y1 <= y0) return out;
  const at::Tensor src = map.to(at::kCPU, at::kFloat).contiguous();
  cv::Mat in(static_cast<int>(src.size(0)), static_cast<int>(src.size(1)), CV_32F, src.data_ptr());
  cv::Mat resized;
  cv::resize(in, resized, cv::Size(static_cast<int>(x1 - x0), static_cast<int>(y1 - y0)), 0, 0,
             cv::INTER_LINEAR);
  out.slice(0, y0, y1).slice(1, x0, x1).copy_(
      at::from_blob(resized.data, {resized.rows, resized.cols}, at::kFloat));
  return out;
}

void write_png(const std::string& path, const cv::Mat& image) {
  std::vector<uchar> bytes;
  if (!cv::imencode(".png", image, bytes)) {
    throw InputError(fmt::format("dinov2: OpenCV could not encode {} as PNG", path));
  }
  write_file_atomically(path, std::string(bytes.begin(), bytes.end()));
}

int images_exit_status(size_t failed, size_t total) {
  if (failed == 0) return kExitSuccess;
  std::cerr << fmt::format("dinov2: {} of {} images could not be read\n", failed, total);
  return kExitInputsFailed;
}

std::vector<std::string> require_images(const std::vector<std::string>& inputs) {
  auto paths = collect_inputs(inputs);
  if (paths.empty()) {
    throw InputError::invalid_argument("dinov2: no images found in the inputs given");
  }
  return paths;
}

int for_each_image(const Pipeline& pipeline, const std::vector<std::string>& paths,
                   const std::function<void(const ImageFeatures&)>& fn) {
  const PipelineSummary summary = pipeline.run(ImageSource::files(paths), [&](ImageFeatures&& r) {
    if (r.ok()) {
      fn(r);
    } else {
      std::cerr << fmt::format("dinov2: skipped {}: {}\n", r.name, r.error);
    }
  });
  return images_exit_status(summary.failed, paths.size());
}

std::string format_confusion(const at::Tensor& confusion, const std::vector<std::string>& names) {
  const int64_t c = confusion.size(0);
  std::vector<std::string> labels;
  size_t first = 0;
  for (int64_t i = 0; i < c; ++i) {
    labels.push_back(fmt::format("[{}] {}", i, names[static_cast<size_t>(i)]));
    first = std::max(first, labels.back().size() + 2);
  }
  const int64_t biggest = std::max<int64_t>(1, confusion.max().item<int64_t>());
  const size_t cell = std::max<size_t>(5, std::to_string(biggest).size() + 2);
  std::string out = "rows: true class, columns: predicted class\n";
  out += std::string(first, ' ');
  for (int64_t j = 0; j < c; ++j) out += fmt::format("{:>{}}", fmt::format("[{}]", j), cell);
  out += "\n";
  for (int64_t i = 0; i < c; ++i) {
    out += fmt::format("{:<{}}", labels[static_cast<size_t>(i)], first);
    for (int64_t j = 0; j < c; ++j)
      out += fmt::format("{:>{}}", confusion[i][j].item<int64_t>(), cell);
    out += "\n";
  }
  return out;
}

}  // namespace dinov2::cli
