// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The exceptions thrown by dinov2. Every failure leaves the public API as a
/// dinov2::Error (derived from std::runtime_error); c10::Error and cv::Exception never escape.
/// Messages start with "dinov2:" and name the value at fault and, where there is one, the fix.
#pragma once

#include <stdexcept>
#include <string>

namespace dinov2 {

/// @brief What went wrong, for callers that branch without catching subclasses.
enum class ErrorCode {
  kInvalidArgument = 1,  ///< a bad argument that is not an image or a model file
  kBadInput = 2,         ///< an image or tensor the library cannot process
  kTooManyTokens = 3,    ///< an input over Options::max_tokens
  kModelFile = 4,        ///< a missing, unreadable or incompatible model or head file
  kDevice = 5,           ///< a device or dtype that is not available
  kRuntime = 6,          ///< a failure inside LibTorch or OpenCV during inference
};

/// @brief The root of every exception thrown by dinov2.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message);
  /// @brief The category of the failure.
  ErrorCode code() const noexcept { return code_; }
  /// @brief The message without its "dinov2: " prefix, to follow another message's context,
  /// e.g. "dinov2: skipped cat.jpg: " + e.message().
  std::string message() const;

 private:
  ErrorCode code_;
};

/// @brief An image or tensor that cannot be processed (empty, wrong channels, wrong size...).
class InputError : public Error {
 public:
  explicit InputError(const std::string& message, ErrorCode code = ErrorCode::kBadInput)
      : Error(code, message) {}
};

/// @brief A model or head file that is missing, unreadable, not a dinov2 export or too new.
class ModelFileError : public Error {
 public:
  explicit ModelFileError(const std::string& message) : Error(ErrorCode::kModelFile, message) {}
};

/// @brief A device or dtype that is unavailable on this machine.
class DeviceError : public Error {
 public:
  explicit DeviceError(const std::string& message) : Error(ErrorCode::kDevice, message) {}
};

}  // namespace dinov2
