// SPDX-License-Identifier: Apache-2.0
#include "dinov2/error.hpp"

#include <string_view>

namespace dinov2 {

namespace {
std::string with_prefix(const std::string& message) {
  return message.rfind("dinov2:", 0) == 0 ? message : "dinov2: " + message;
}
}  // namespace

Error::Error(ErrorCode code, const std::string& message)
    : std::runtime_error(with_prefix(message)), code_(code) {}

std::string Error::message() const {
  const std::string_view what = this->what();
  std::string_view rest = what.substr(7);  // every message starts with "dinov2:"
  if (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
  return std::string(rest);
}

}  // namespace dinov2
