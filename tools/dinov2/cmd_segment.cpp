// SPDX-License-Identifier: Apache-2.0
// `dinov2 segment`: semantic segmentation of images with an exported linear segmentation head,
// written as PNGs in the dataset's palette.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <opencv2/imgproc.hpp>

#include <iostream>
#include <memory>
#include <set>

#include "analysis.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "dinov2/error.hpp"
#include "dinov2/heads.hpp"

namespace dinov2::cli {

namespace {

struct SegmentArgs {
  ModelArgs model;
  std::string head;
  std::string output;
  std::string recipe = "aligned";
  bool overlay = false;
  std::vector<std::string> inputs;
};

cv::Mat bgr_mat(const at::Tensor& rgb) {
  const at::Tensor bgr = rgb.flip({2}).contiguous();
  return cv::Mat(static_cast<int>(bgr.size(0)), static_cast<int>(bgr.size(1)), CV_8UC3,
                 bgr.data_ptr())
      .clone();
}

int run_segment(const SegmentArgs& args) {
  const auto paths = require_images(args.inputs);
  make_folder(args.output);
  const Model model = args.model.load();
  const SegmentationHead head = SegmentationHead::load(args.head, model);
  const HeadInfo& info = head.info();
  const Pipeline pipeline(model, parse_recipe(args.recipe),
                          per_image_options().with_layers(head.layers()));
  std::set<std::string> used;
  return for_each_image(pipeline, paths, [&](const ImageFeatures& image) {
    const std::string& path = image.name;
    const PatchGrid& grid = image.grid;
    const at::Tensor logits = head.logits(image.layers);
    // Labels at the size of the region the model saw, placed on the original image.
    const int64_t x0 = std::llround(grid.crop_x), y0 = std::llround(grid.crop_y);
    const int64_t x1 =
        std::min<int64_t>(grid.original_width, std::llround(grid.crop_x + grid.crop_width));
    const int64_t y1 =
        std::min<int64_t>(grid.original_height, std::llround(grid.crop_y + grid.crop_height));
    const at::Tensor labels = head.labels(logits, y1 - y0, x1 - x0);  // [1, h, w]
    const at::Tensor colours = head.colorize(labels)[0];              // [h, w, 3] RGB
    at::Tensor full = at::zeros({grid.original_height, grid.original_width, 3}, at::kByte);
    full.slice(0, y0, y1).slice(1, x0, x1).copy_(colours);
    const std::string out = output_path(args.output, path, "_seg.png", used);
    write_png(out, bgr_mat(full));
    if (args.overlay) {
      cv::Mat blended;
      cv::addWeighted(read_bgr(path), 0.5, bgr_mat(full), 0.5, 0.0, blended);
      write_png(out.substr(0, out.size() - 8) + "_overlay.png", blended);
    }
    // The three largest classes of the image, by pixel share.
    const at::Tensor counts = at::bincount(labels.reshape({-1}).cpu(), {}, info.num_classes);
    const auto top = counts.topk(std::min<int64_t>(3, info.num_classes));
    std::string summary;
    const double total = static_cast<double>(labels.numel());
    for (int64_t j = 0; j < std::get<0>(top).size(0); ++j) {
      const int64_t c = std::get<1>(top)[j].item<int64_t>();
      const double share = std::get<0>(top)[j].item<double>() / total;
      if (share <= 0) break;
      const std::string name = static_cast<size_t>(c) < info.class_names.size()
                                   ? info.class_names[static_cast<size_t>(c)]
                                   : std::to_string(c);
      summary += fmt::format("{}{} {:.1f} %", j ? ", " : "", name, 100.0 * share);
    }
    std::cout << fmt::format("{} -> {}: {}\n", path, out, summary);
  });
}

}  // namespace

Command register_segment(CLI::App& app) {
  auto args = std::make_shared<SegmentArgs>();
  CLI::App* sub = app.add_subcommand(
      "segment", "Semantic segmentation of images with an exported linear segmentation head");
  sub->footer(
      "HEAD is a segmentation head exported with `dinov2-export-head --kind seg_linear` for the "
      "same (full-depth) backbone. Writes DIR/<name>_seg.png at the size of each image in the "
      "dataset's palette (logits resized bilinearly, then arg-max; pixels the recipe cropped "
      "away are black), and with --overlay DIR/<name>_overlay.png (half image, half colours). "
      "Prints the three largest classes of each image. Exit code 3 when some images could not "
      "be read.");
  args->model.add_to(sub);
  add_head_file(sub, args->head, "Segmentation head file");
  add_output_folder(sub, args->output);
  sub->add_option("--recipe", args->recipe, recipe_help())->capture_default_str();
  sub->add_flag("--overlay", args->overlay, "Also write the colours blended over the image");
  add_image_inputs(sub, args->inputs);
  return {sub, [args] { return run_segment(*args); }};
}

}  // namespace dinov2::cli
