// SPDX-License-Identifier: Apache-2.0
// Entry point of the `dinov2` tool: parses the command line with CLI11 and runs the chosen
// subcommand, turning every dinov2::Error into a `dinov2: ...` message and an exit code.
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <torch/version.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "commands.hpp"
#include "dinov2/error.hpp"
#include "dinov2/runtime.hpp"
#include "dinov2/version.hpp"

namespace {

int run_command(const dinov2::cli::Command& command) {
  using namespace dinov2::cli;
  try {
    return command.run();
  } catch (const dinov2::Error& e) {
    std::cerr << e.what() << "\n";
    return e.code() == dinov2::ErrorCode::kRuntime ? kExitFailure : kExitUsage;
  } catch (const c10::Error& e) {
    std::cerr << "dinov2: LibTorch failed: " << e.what_without_backtrace() << "\n";
    return kExitFailure;
  } catch (const std::bad_alloc&) {
    std::cerr << "dinov2: out of memory; try a smaller --batch\n";
    return kExitFailure;
  } catch (const std::exception& e) {
    std::cerr << "dinov2: unexpected error: " << e.what() << "\n";
    return kExitFailure;
  } catch (...) {
    std::cerr << "dinov2: unexpected error of an unknown type\n";
    return kExitFailure;
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dinov2::cli;
  CLI::App app{"dinov2: DINOv2 features from the command line", "dinov2"};
  app.set_version_flag("--version", [] {
    return fmt::format("dinov2 {} (LibTorch {})\nCPU: {}", dinov2::kVersion, TORCH_VERSION,
                       dinov2::to_string(dinov2::cpu_info()));
  });
  app.require_subcommand(1);
  app.failure_message([](const CLI::App* failed, const CLI::Error& e) {
    return "dinov2: " + CLI::FailureMessage::simple(failed, e);
  });
  app.footer(
      "Run `dinov2 SUBCOMMAND --help` for the options of a subcommand; docs/CLI.md has the "
      "details.\nExit codes: 0 success, 1 unexpected failure, 2 usage/model/output error, "
      "3 some inputs failed, 4 verify found inputs missing or duplicated.");

  const std::vector<Command> commands = {
      register_extract(app),  register_pca(app),    register_search(app),  register_probe(app),
      register_classify(app), register_depth(app),  register_segment(app), register_convert(app),
      register_merge(app),    register_verify(app), register_index(app),   register_dedup(app),
  };

  // CLI11 would report a mistyped subcommand as a missing one; name it instead.
  if (argc > 1 && argv[1][0] != '-') {
    std::string names;
    bool known = false;
    for (const auto& command : commands) {
      names += (names.empty() ? "" : ", ") + command.app->get_name();
      known = known || command.app->check_name(argv[1]);
    }
    if (!known) {
      std::cerr << "dinov2: unknown subcommand '" << argv[1] << "' (the subcommands are: " << names
                << "); run `dinov2 --help`\n";
      return kExitUsage;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // prints the message and a hint
    return kExitUsage;
  }

  for (const auto& command : commands) {
    if (command.app->parsed()) return run_command(command);
  }
  std::cerr << "dinov2: no subcommand given; run `dinov2 --help`\n";
  return kExitUsage;
}
