// SPDX-License-Identifier: Apache-2.0
// Private to src/: message building for the preprocessing files, and their argument errors.
#pragma once

#include <cstddef>
#include <sstream>
#include <string>
#include <vector>

#include "dinov2/error.hpp"

namespace dinov2::detail {

// Replaces each "{}" of `pattern` with the next argument, streamed. (fmt is not used here, so
// that this file does not depend on which fmt headers come first: the LibTorch wheel bundles its
// own.)
template <typename... Args>
inline std::string text(const char* pattern, const Args&... args) {
  std::vector<std::string> items;
  (
      [&items](const auto& a) {
        std::ostringstream s;
        s << a;
        items.push_back(s.str());
      }(args),
      ...);
  std::string out;
  std::size_t next = 0;
  for (const char* p = pattern; *p != '\0'; ++p) {
    if (p[0] == '{' && p[1] == '}' && next < items.size()) {
      out += items[next++];
      ++p;
    } else {
      out += *p;
    }
  }
  return out;
}

/// Throws InputError::invalid_argument(message).
[[noreturn]] inline void bad_argument(const std::string& message) {
  throw InputError::invalid_argument(message);
}

}  // namespace dinov2::detail
