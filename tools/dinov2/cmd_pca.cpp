// SPDX-License-Identifier: Apache-2.0
// `dinov2 pca`: the first principal components of the patch features of a set of images (fitted
// jointly) as RGB pictures at the size of each image, optionally on the foreground only, and a
// contact sheet of the originals next to their pictures.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <iostream>
#include <memory>
#include <set>

#include "analysis.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "dinov2/error.hpp"
#include "dinov2/pca.hpp"

namespace dinov2::cli {

namespace {

struct PcaArgs {
  ModelArgs model;
  std::string output;
  std::string recipe = "aligned";
  int components = 3;
  bool mask = false;
  double threshold = 0.5;
  double clip = 1.0;
  bool smooth = false;
  int sheet_height = 256;
  std::vector<std::string> inputs;
};

int run_pca(const PcaArgs& args) {
  const auto paths = require_images(args.inputs);
  make_folder(args.output);
  const Model model = args.model.load();
  const Pipeline pipeline(model, parse_recipe(args.recipe), per_image_options());

  std::vector<ImageFeatures> images;  // the grid and patches of each image that ran
  std::vector<at::Tensor> patches;
  Progress progress(static_cast<int64_t>(paths.size()), 0);
  const PipelineSummary run = pipeline.run(ImageSource::files(paths), [&](ImageFeatures&& r) {
    progress.advance(1);
    if (!r.ok()) {
      progress.message(fmt::format("dinov2: skipped {}: {}", r.name, r.error));
      return;
    }
    patches.push_back(r.patches);
    images.push_back(std::move(r));
  });
  progress.finish();
  if (images.empty()) {
    std::cerr << "dinov2: none of the inputs could be read\n";
    return kExitInputsFailed;
  }

  PcaOptions options;
  options.components = args.components;
  options.foreground_mask = args.mask;
  options.mask_threshold = args.threshold;
  options.clip_percentile = args.clip;
  const PcaColors pca = pca_colors(patches, options);
  const Upsampling mode = args.smooth ? Upsampling::kBilinear : Upsampling::kNearest;

  std::set<std::string> used;
  std::vector<std::vector<at::Tensor>> sheet;
  for (size_t i = 0; i < images.size(); ++i) {
    const PatchGrid& grid = images[i].grid;
    const at::Tensor picture = upsample_to_original(pca.colors[i], grid, mode);
    const std::string out = output_path(args.output, images[i].name, "_pca.png", used);
    save_png(out, picture);
    std::vector<at::Tensor> row = {rgb_tensor(read_bgr(images[i].name)), picture};
    if (args.mask) {
      const at::Tensor mask = upsample_to_original(pca.masks[i].to(at::kFloat).unsqueeze(2), grid,
                                                   Upsampling::kNearest);
      save_png(out.substr(0, out.size() - 8) + "_mask.png", mask.squeeze(2));
      row.push_back(mask.squeeze(2));
    }
    sheet.push_back(std::move(row));
    std::cout << fmt::format("{} -> {}\n", images[i].name, out);
  }
  const std::string sheet_path = args.output + "/sheet.png";
  save_png(sheet_path, contact_sheet(sheet, args.sheet_height));

  const at::Tensor variance = pca.pca.variance();
  std::string spread;
  for (int64_t c = 0; c < variance.size(0); ++c) {
    spread += fmt::format("{}{:.4g}", c ? ", " : "", variance[c].item<double>());
  }
  std::cout << fmt::format(
      "PCA of {} patches of {} image(s){}: variance along the {} component(s) {}; sheet {}\n",
      pca.pca.samples(), images.size(), args.mask ? " (foreground)" : "", variance.size(0), spread,
      sheet_path);
  return images_exit_status(run.failed, paths.size());
}

}  // namespace

Command register_pca(CLI::App& app) {
  auto args = std::make_shared<PcaArgs>();
  CLI::App* sub = app.add_subcommand(
      "pca", "Picture the first principal components of the patch features as RGB images");
  sub->footer(
      "The PCA is fitted jointly over the patches of all the images, so one colour means one "
      "feature direction across the set. Each component is scaled to [0, 1] between its "
      "--clip-th and (100 - --clip)-th percentile. With --mask the first component of a PCA "
      "over all patches (oriented so that the image borders score low) separates the "
      "foreground, and the colours come from a second PCA of the foreground patches only. "
      "Writes DIR/<name>_pca.png (and <name>_mask.png) at the size of each image, and "
      "DIR/sheet.png (original | PCA | mask). Exit code 3 when some images could not be read.");
  args->model.add_to(sub);
  add_output_folder(sub, args->output);
  sub->add_option("--recipe", args->recipe, recipe_help())->capture_default_str();
  sub->add_option("--components", args->components,
                  "Components shown: 3 (RGB), 2 (red and green) or 1 (grey)")
      ->check(CLI::Range(1, 3))
      ->capture_default_str();
  sub->add_flag("--mask", args->mask, "Colour the foreground only (see below)");
  sub->add_option("--threshold", args->threshold,
                  "Foreground threshold on the first component scaled to [0, 1]")
      ->check(CLI::Range(0.0, 0.999))
      ->capture_default_str();
  sub->add_option("--clip", args->clip, "Percentile clipped at each end of every component")
      ->check(CLI::Range(0.0, 49.0))
      ->capture_default_str();
  sub->add_flag("--smooth", args->smooth,
                "Bilinear upsampling instead of one flat block per patch");
  sub->add_option("--sheet-height", args->sheet_height, "Row height of sheet.png in pixels")
      ->check(CLI::Range(16, 4096))
      ->capture_default_str();
  add_image_inputs(sub, args->inputs);
  return {sub, [args] { return run_pca(*args); }};
}

}  // namespace dinov2::cli
