// SPDX-License-Identifier: Apache-2.0
#include "dinov2/error.hpp"

namespace dinov2 {

namespace {
std::string with_prefix(const std::string& message) {
  return message.rfind("dinov2:", 0) == 0 ? message : "dinov2: " + message;
}
}  // namespace

Error::Error(ErrorCode code, const std::string& message)
    : std::runtime_error(with_prefix(message)), code_(code) {}

}  // namespace dinov2
