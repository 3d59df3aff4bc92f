// SPDX-License-Identifier: Apache-2.0
// The subcommands of the `dinov2` tool. Each lives in its own cmd_<name>.cpp and is registered by
// main.cpp through the function declared here. To add one: write cmd_<name>.cpp with
// `Command register_<name>(CLI::App& app)`, declare it below and add it to the list in main.cpp.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace dinov2::cli {

/// @brief Exit codes of the tool (docs/CLI.md).
enum ExitCode : int {
  kExitSuccess = 0,       ///< everything asked for was done
  kExitFailure = 1,       ///< an unexpected failure (a bug, out of memory, a LibTorch error)
  kExitUsage = 2,         ///< bad arguments, unreadable model, unusable device, unwritable output
  kExitInputsFailed = 3,  ///< the run finished but some inputs were skipped (listed in the output)
  kExitIncomplete = 4,    ///< `verify`: inputs missing or duplicated in the outputs
};

/// @brief A registered subcommand: its CLI11 app (options bound by the register function) and
/// the action that runs after parsing. The action returns the exit code; it may throw
/// dinov2::Error, which main() reports as `dinov2: ...` with kExitUsage (kExitFailure for
/// ErrorCode::kRuntime).
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

/// @brief `dinov2 extract`: features of images to safetensors or npy (cmd_extract.cpp).
Command register_extract(CLI::App& app);
/// @brief `dinov2 merge`: extract outputs combined into one file (cmd_merge.cpp).
Command register_merge(CLI::App& app);
/// @brief `dinov2 verify`: extract outputs checked against their inputs (cmd_verify.cpp).
Command register_verify(CLI::App& app);
/// @brief `dinov2 index build`: FAISS indexes over extract outputs (cmd_index.cpp).
Command register_index(CLI::App& app);
/// @brief `dinov2 dedup`: near-duplicate groups by cosine threshold (cmd_index.cpp).
Command register_dedup(CLI::App& app);
/// @brief `dinov2 convert`: weights to a TorchScript backbone file (cmd_convert.cpp).
Command register_convert(CLI::App& app);
/// @brief `dinov2 pca`: PCA pictures of the patch features (cmd_pca.cpp).
Command register_pca(CLI::App& app);
/// @brief `dinov2 search`: cosine top-k against an extracted gallery (cmd_search.cpp).
Command register_search(CLI::App& app);
/// @brief `dinov2 probe train|eval`: linear and kNN probes on an ImageFolder (cmd_probe.cpp).
Command register_probe(CLI::App& app);
/// @brief `dinov2 classify`: top-k classes under a linear head or probe (cmd_classify.cpp).
Command register_classify(CLI::App& app);
/// @brief `dinov2 depth`: depth maps from an exported depth head (cmd_depth.cpp).
Command register_depth(CLI::App& app);
/// @brief `dinov2 segment`: segmentation maps from an exported segmentation head
/// (cmd_segment.cpp).
Command register_segment(CLI::App& app);

}  // namespace dinov2::cli
