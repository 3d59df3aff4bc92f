// SPDX-License-Identifier: Apache-2.0
// The text parsers: dinov2::Recipe::parse (with its geometry), and the tool's --recipe names,
// @list lines and --shard I/N. The first byte picks the parser, the rest is the text.
#include <ATen/ATen.h>

#include <string>

#include "../tools/dinov2/common.hpp"
#include "dinov2/preprocess.hpp"
#include "fuzz_support.hpp"

namespace {

void recipe(const std::string& text, bool tool_names) {
  using dinov2::fuzz::require;
  dinov2::fuzz::only_dinov2_errors([&] {
    const dinov2::Recipe r =
        tool_names ? dinov2::cli::parse_recipe(text) : dinov2::Recipe::parse(text);
    require(dinov2::Recipe::parse(r.to_string()) == r, "parse(to_string()) gives the recipe back");
    require(r.token_bound() > 0, "token_bound is positive");
    // The geometry for a few image sizes, including extreme ones.
    for (const auto& size : {std::pair<int64_t, int64_t>{1, 1},
                             {480, 640},
                             {1, 100000},
                             {100000, 3},
                             {65535, 65535}}) {
      dinov2::fuzz::only_dinov2_errors([&] {
        const auto plan = r.plan(size.first, size.second);
        require(plan.grid.rows > 0 && plan.grid.cols > 0, "a plan has a grid");
        require(plan.grid.tokens() <= r.token_bound(), "a plan obeys token_bound");
      });
    }
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 4) {
    case 0:
      recipe(text, false);
      break;
    case 1:
      recipe(text, true);
      break;
    case 2:
      for (const auto& line : dinov2::cli::list_lines(text)) {
        dinov2::fuzz::require(!line.empty() && line[0] != '#', "no blank or comment lines");
        dinov2::fuzz::require(line.find('\n') == std::string::npos, "one path per line");
      }
      break;
    default:
      dinov2::fuzz::only_dinov2_errors([&] {
        const auto [index, count] = dinov2::cli::parse_shard(text);
        dinov2::fuzz::require(0 <= index && index < count, "a shard is in [0, N)");
      });
  }
  return 0;
}
