// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The exceptions thrown by dinov2. Every failure leaves the public API as a
/// dinov2::Error (derived from std::runtime_error); c10::Error and cv::Exception never escape.
/// Messages start with "dinov2:" and name the value at fault and, where there is one, the fix;
/// Error::message() gives the same text without that prefix.
///
/// One model: a small hierarchy whose classes own fixed codes, so that a caller may branch on the
/// class (catch InputError) or on the code (Error::code()) and get the same answer:
///
/// | class          | codes                                          |
/// |----------------|------------------------------------------------|
/// | InputError     | kInvalidArgument, kBadInput, kTooManyTokens    |
/// | ModelFileError | kModelFile                                     |
/// | DeviceError    | kDevice                                        |
/// | RuntimeError   | kRuntime                                       |
///
/// Error itself cannot be constructed directly; each class's constructors give only its codes.
#pragma once

#include <stdexcept>
#include <string>

namespace dinov2 {

/// @brief What went wrong, for callers that branch without catching subclasses.
enum class ErrorCode {
  kInvalidArgument = 1,  ///< a bad argument that is not an image or a model file (InputError)
  kBadInput = 2,         ///< an image or tensor the library cannot process (InputError)
  kTooManyTokens = 3,    ///< an input over Options::max_tokens (InputError)
  kModelFile = 4,        ///< a missing, unreadable or incompatible model or head file
  kDevice = 5,           ///< a device or dtype that is not available
  kRuntime = 6,          ///< a failure inside LibTorch or OpenCV during inference
};

/// @brief The root of every exception thrown by dinov2.
class Error : public std::runtime_error {
 public:
  /// @brief The category of the failure.
  ErrorCode code() const noexcept { return code_; }
  /// @brief The message without its "dinov2: " prefix, to follow another message's context,
  /// e.g. "dinov2: skipped cat.jpg: " + e.message(). what() is the message with the prefix.
  std::string message() const;

 protected:
  /// @brief `message` gets the "dinov2: " prefix when it does not start with "dinov2:".
  Error(ErrorCode code, const std::string& message);

 private:
  ErrorCode code_;
};

/// @brief Bad input: an image or tensor that cannot be processed (kBadInput), an input over the
/// token cap (kTooManyTokens), or an argument out of its range (kInvalidArgument).
class InputError : public Error {
 public:
  /// @brief An image or tensor that cannot be processed: ErrorCode::kBadInput.
  explicit InputError(const std::string& message) : Error(ErrorCode::kBadInput, message) {}
  /// @brief An argument out of its range (a size, a count, an option): kInvalidArgument.
  static InputError invalid_argument(const std::string& message) {
    return InputError(ErrorCode::kInvalidArgument, message);
  }
  /// @brief An input with more patch tokens than Options::max_tokens: kTooManyTokens.
  static InputError too_many_tokens(const std::string& message) {
    return InputError(ErrorCode::kTooManyTokens, message);
  }

 private:
  InputError(ErrorCode code, const std::string& message) : Error(code, message) {}
};

/// @brief A model or head file that is missing, unreadable, not a dinov2 export or too new:
/// ErrorCode::kModelFile.
class ModelFileError : public Error {
 public:
  explicit ModelFileError(const std::string& message) : Error(ErrorCode::kModelFile, message) {}
};

/// @brief A device or dtype that is unavailable on this machine: ErrorCode::kDevice.
class DeviceError : public Error {
 public:
  explicit DeviceError(const std::string& message) : Error(ErrorCode::kDevice, message) {}
};

/// @brief A failure inside LibTorch or OpenCV while computing (out of memory, a kernel that
/// failed), or in writing an output file: ErrorCode::kRuntime.
class RuntimeError : public Error {
 public:
  explicit RuntimeError(const std::string& message) : Error(ErrorCode::kRuntime, message) {}
};

}  // namespace dinov2
