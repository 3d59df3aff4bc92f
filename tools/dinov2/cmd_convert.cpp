// SPDX-License-Identifier: Apache-2.0
// `dinov2 convert`: downloaded weights (a Hugging Face folder or model.safetensors, an official
// .pth) to the TorchScript file dinov2-export writes, without Python.
#include <fmt/format.h>

#include <chrono>
#include <iostream>
#include <memory>

#include "commands.hpp"
#include "dinov2/model.hpp"

namespace dinov2::cli {

namespace {

struct ConvertArgs {
  std::string weights;
  std::string output;
  std::string architecture;
};

int run_convert(const ConvertArgs& args) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelInfo info = convert_weights(args.weights, args.output, args.architecture);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << fmt::format(
      "wrote {}: {} ({} blocks, {} register tokens), {} weights sha256 {}, "
      "in {:.1f} s\n",
      args.output, info.variant, info.depth, info.num_register_tokens, info.weights_source,
      info.weights_sha256.substr(0, 12), seconds);
  return kExitSuccess;
}

}  // namespace

Command register_convert(CLI::App& app) {
  auto args = std::make_shared<ConvertArgs>();
  CLI::App* sub = app.add_subcommand(
      "convert", "Write downloaded weights as the TorchScript file dinov2-export writes");
  sub->footer(
      "WEIGHTS is a Hugging Face model folder (config.json and model.safetensors), a bare "
      "model.safetensors, or an official .pth (read without running any code from it). The "
      "output is the same graph, parameters and metadata as `dinov2-export --weights WEIGHTS`, "
      "and loads in Python with torch.jit.load. Every subcommand's --model also takes WEIGHTS "
      "directly; converting once saves the renaming and the checks at each start.");
  sub->add_option("weights", args->weights, "Weight folder or file")
      ->required()
      ->type_name("WEIGHTS");
  sub->add_option("--output,-o", args->output, "The .pt file to write")
      ->required()
      ->type_name("FILE");
  sub->add_option("--architecture", args->architecture,
                  "Architecture file for a model whose depth is not the official one (written by "
                  "python -m dinov2_export.architecture)")
      ->type_name("FILE");
  return {sub, [args] { return run_convert(*args); }};
}

}  // namespace dinov2::cli
