// SPDX-License-Identifier: Apache-2.0
// `dinov2 verify`: checks a set of extract outputs against the inputs they were made from: every
// input present once (as a row or as a listed failure), nothing twice, nothing unknown.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "common.hpp"
#include "dinov2/error.hpp"
#include "dinov2/io.hpp"
#include "feature_files.hpp"
#include "inputs.hpp"

namespace dinov2::cli {

namespace {

using json = nlohmann::json;

struct VerifyArgs {
  std::vector<std::string> features;
  std::vector<std::string> inputs;
  std::string report;
  int show = 20;
};

/// Where an input was found: the output file and whether as a row or a failure.
struct Seen {
  std::string file;
  bool failed = false;
  std::string reason;
};

int run_verify(const VerifyArgs& args) {
  const std::vector<InputItem> items = expand_inputs(args.inputs);
  if (items.empty()) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: no inputs found in {}", fmt::join(args.inputs, " ")));
  }
  std::map<std::string, std::vector<Seen>> seen;  // input path -> where it appears
  int64_t rows = 0, failures = 0;
  const std::vector<std::string> files = feature_file_paths(args.features);
  for (const std::string& path : files) {
    const FeatureFile f = read_feature_file(path);
    rows += f.rows;
    for (const std::string& p : f.paths) seen[p].push_back({path, false, ""});
    for (const json& fail : f.failed) {
      seen[fail.at("path").get<std::string>()].push_back(
          {path, true, fail.value("reason", std::string())});
      ++failures;
    }
  }
  json missing = json::array(), duplicated = json::array(), unknown = json::array(),
       failed = json::array();
  std::map<std::string, bool> expected;
  for (const InputItem& item : items) {
    if (expected.emplace(item.path, true).second == false) continue;  // listed twice by the inputs
    const auto it = seen.find(item.path);
    if (it == seen.end()) {
      missing.push_back(item.path);
      continue;
    }
    if (it->second.size() > 1) {
      json where = json::array();
      for (const Seen& s : it->second) where.push_back(s.file);
      duplicated.push_back({{"path", item.path}, {"in", where}});
    }
    for (const Seen& s : it->second) {
      if (s.failed) failed.push_back({{"path", item.path}, {"reason", s.reason}, {"in", s.file}});
    }
  }
  for (const auto& [path, where] : seen) {
    if (!expected.count(path)) unknown.push_back({{"path", path}, {"in", where.front().file}});
  }
  const std::vector<std::string> unfinished = unfinished_runs(args.features);

  // One line a finding: "missing: PATH", "duplicated: PATH (in A, B)", "failed: PATH: WHY (in A)".
  const auto line = [](const json& entry) {
    if (entry.is_string()) return entry.get<std::string>();
    std::string text = entry.at("path").get<std::string>();
    if (entry.contains("reason")) text += ": " + entry.at("reason").get<std::string>();
    const json& in = entry.at("in");
    return text + " (in " +
           (in.is_string()
                ? in.get<std::string>()
                : fmt::format("{}", fmt::join(in.get<std::vector<std::string>>(), ", "))) +
           ")";
  };
  const auto show = [&](const char* what, const json& list) {
    int shown = 0;
    for (const json& entry : list) {
      if (shown++ == args.show) {
        std::cerr << fmt::format(
            "  ... and {} more {}{}\n", list.size() - static_cast<size_t>(args.show), what,
            args.report.empty() ? " (--report FILE lists all)" : " (all in the report)");
        break;
      }
      std::cerr << fmt::format("  {}: {}\n", what, line(entry));
    }
  };
  show("missing", missing);
  show("duplicated", duplicated);
  show("not an input", unknown);
  show("failed", failed);
  for (const std::string& parts : unfinished) {
    std::cerr << fmt::format("  unfinished run: {} (rerun its extract with --resume)\n", parts);
  }
  const bool complete = missing.empty() && duplicated.empty() && unknown.empty();
  std::cerr << fmt::format(
      "dinov2 verify: {} inputs, {} outputs: {} rows, {} failed; {} missing, {} duplicated, {} not "
      "an input{}: {}\n",
      expected.size(), files.size(), rows, failures, missing.size(), duplicated.size(),
      unknown.size(),
      unfinished.empty() ? "" : fmt::format(", {} unfinished runs", unfinished.size()),
      !complete        ? "INCOMPLETE"
      : failed.empty() ? "complete"
                       : "complete, with failed inputs");
  if (!args.report.empty()) {
    const json report = {
        {"inputs", expected.size()}, {"outputs", files},   {"rows", rows},
        {"complete", complete},      {"missing", missing}, {"duplicated", duplicated},
        {"not_an_input", unknown},   {"failed", failed},   {"unfinished_runs", unfinished}};
    write_file_atomically(args.report, dump_json(report, 2) + "\n");
  }
  if (!complete) return kExitIncomplete;
  return failed.empty() ? kExitSuccess : kExitInputsFailed;
}

}  // namespace

Command register_verify(CLI::App& app) {
  auto args = std::make_shared<VerifyArgs>();
  CLI::App* sub = app.add_subcommand(
      "verify",
      "Check extract outputs against their inputs: every input once, as a row or a listed "
      "failure");
  sub->footer(
      "Exit code 0: complete; 3: complete, some inputs failed (listed); 4: inputs missing, "
      "duplicated, or rows that are not among the inputs. INPUT is expanded as extract expands "
      "it (files, folders, @lists, tar shards).");
  sub->add_option("--features,-f", args->features,
                  "Outputs of dinov2 extract: files, npy folders, or folders of .safetensors")
      ->required()
      ->allow_extra_args(false)
      ->type_name("PATH");
  sub->add_option("--report", args->report, "Write every finding as JSON to this file")
      ->type_name("FILE");
  sub->add_option("--show", args->show, "Findings of each kind printed on stderr")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  sub->add_option("inputs", args->inputs, "Images, folders, @lists or WebDataset tar shards")
      ->required()
      ->type_name("INPUT");
  return {sub, [args] { return run_verify(*args); }};
}

}  // namespace dinov2::cli
