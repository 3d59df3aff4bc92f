// SPDX-License-Identifier: Apache-2.0
// Private to src/: the argument errors of the preprocessing files.
#pragma once

#include <string>

#include "dinov2/error.hpp"

namespace dinov2::detail {

/// Throws InputError::invalid_argument(message).
[[noreturn]] inline void bad_argument(const std::string& message) {
  throw InputError::invalid_argument(message);
}

}  // namespace dinov2::detail
