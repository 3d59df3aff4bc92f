// SPDX-License-Identifier: Apache-2.0
// `dinov2 depth`: metric depth of images from an exported linear depth head, written as
// colour-mapped PNGs (and optionally 16-bit millimetre PNGs).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <opencv2/imgproc.hpp>

#include <iostream>
#include <map>
#include <memory>
#include <set>

#include "analysis.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "dinov2/error.hpp"
#include "dinov2/heads.hpp"

namespace dinov2::cli {

namespace {

struct DepthArgs {
  ModelArgs model;
  std::string head;
  std::string output;
  std::string recipe = "aligned";
  std::string colormap = "inferno";
  bool raw = false;
  std::vector<std::string> inputs;
};

const std::map<std::string, int>& colormaps() {
  static const std::map<std::string, int> m = {
      {"inferno", cv::COLORMAP_INFERNO}, {"magma", cv::COLORMAP_MAGMA},
      {"viridis", cv::COLORMAP_VIRIDIS}, {"turbo", cv::COLORMAP_TURBO},
      {"jet", cv::COLORMAP_JET},         {"bone", cv::COLORMAP_BONE}};
  return m;
}

int run_depth(const DepthArgs& args) {
  const auto paths = require_images(args.inputs);
  make_folder(args.output);
  const Model model = args.model.load();
  const DepthHead head = DepthHead::load(args.head, model);
  const Pipeline pipeline(model, parse_recipe(args.recipe),
                          per_image_options().with_layers(head.layers()));
  std::set<std::string> used;
  return for_each_image(pipeline, paths, [&](const ImageFeatures& image) {
    const std::string& path = image.name;
    const PatchGrid& grid = image.grid;
    const at::Tensor depth = head.predict(image.layers)[0].cpu();  // [H, W] metres
    const double lo = depth.min().item<double>(), hi = depth.max().item<double>();
    // Near is bright: 255 at the nearest depth of this image, 0 at the farthest.
    const at::Tensor scaled =
        hi > lo ? ((hi - depth) / (hi - lo) * 255.0).round() : at::full_like(depth, 128.0);
    const at::Tensor full = map_to_original(scaled, grid, -1.0f);
    const at::Tensor inside = full.ge(0.0);
    const at::Tensor u8 = full.clamp(0.0, 255.0).round().to(at::kByte).contiguous();
    cv::Mat grey(static_cast<int>(u8.size(0)), static_cast<int>(u8.size(1)), CV_8UC1,
                 u8.data_ptr());
    cv::Mat colour;
    cv::applyColorMap(grey, colour, colormaps().at(args.colormap));
    // Pixels outside the region the model saw (eval224's crop) stay black.
    const at::Tensor outside = inside.logical_not().to(at::kByte).contiguous();
    cv::Mat outside_mask(grey.rows, grey.cols, CV_8UC1, outside.data_ptr());
    colour.setTo(cv::Scalar(0, 0, 0), outside_mask);
    const std::string out = output_path(args.output, path, "_depth.png", used);
    write_png(out, colour);
    if (args.raw) {
      const at::Tensor mm = map_to_original(depth * 1000.0, grid, 0.0f)
                                .clamp(0.0, 65535.0)
                                .round()
                                .to(at::kInt)
                                .contiguous();
      cv::Mat mm32(static_cast<int>(mm.size(0)), static_cast<int>(mm.size(1)), CV_32SC1,
                   mm.data_ptr());
      cv::Mat mm16;
      mm32.convertTo(mm16, CV_16U);
      write_png(out.substr(0, out.size() - 10) + "_depth16.png", mm16);
    }
    std::cout << fmt::format("{} -> {}: depth {:.3f} .. {:.3f} m (median {:.3f} m)\n", path, out,
                             lo, hi, depth.median().item<double>());
  });
}

}  // namespace

Command register_depth(CLI::App& app) {
  auto args = std::make_shared<DepthArgs>();
  CLI::App* sub =
      app.add_subcommand("depth", "Metric depth of images from an exported linear depth head");
  sub->footer(
      "HEAD is a depth head exported with `dinov2-export-head --kind depth_linear|depth_linear4` "
      "for the same backbone. Writes DIR/<name>_depth.png at the size of each image: depth "
      "scaled per image from its nearest (bright) to its farthest (dark) value and colour-mapped; "
      "pixels the recipe cropped away are black. --raw also writes DIR/<name>_depth16.png, the "
      "depth in millimetres as a 16-bit grey PNG. Prints the depth range of each image. Exit "
      "code 3 when some images could not be read.");
  args->model.add_to(sub);
  add_head_file(sub, args->head, "Depth head file");
  add_output_folder(sub, args->output);
  sub->add_option("--recipe", args->recipe, recipe_help())->capture_default_str();
  std::vector<std::string> names;
  for (const auto& [name, code] : colormaps()) names.push_back(name);
  sub->add_option("--colormap", args->colormap, "OpenCV colour map")
      ->check(CLI::IsMember(names))
      ->capture_default_str();
  sub->add_flag("--raw", args->raw, "Also write the depth in millimetres as a 16-bit PNG");
  add_image_inputs(sub, args->inputs);
  return {sub, [args] { return run_depth(*args); }};
}

}  // namespace dinov2::cli
