// SPDX-License-Identifier: Apache-2.0
// Private to src/: the helpers every compiled part uses at the API boundary, where LibTorch and
// OpenCV exceptions become dinov2::Error and tensors are described in messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <opencv2/core.hpp>

#include <exception>
#include <new>
#include <sstream>
#include <string>

#include "dinov2/error.hpp"

namespace dinov2::detail {

/// "[2, 3, 224, 224]", or "an undefined tensor".
inline std::string shape_of(const at::Tensor& t) {
  if (!t.defined()) return "an undefined tensor";
  std::ostringstream s;
  s << "[";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.size(i);
  s << "]";
  return s.str();
}

/// The first line of an exception message.
inline std::string first_line(const std::string& msg) {
  const auto eol = msg.find('\n');
  return eol == std::string::npos ? msg : msg.substr(0, eol);
}

/// The useful line of a c10::Error: the dinov2 message raised by a scripted module when there
/// is one, else the first line without LibTorch's backtrace.
inline std::string torch_message(const c10::Error& e) {
  std::string msg = e.what_without_backtrace();
  const auto ours = msg.rfind("dinov2:");
  if (ours != std::string::npos) msg = msg.substr(ours);
  const auto eol = msg.find('\n');
  return eol == std::string::npos ? msg : msg.substr(0, eol);
}

/// Runs `f`, turning every exception but dinov2's own into dinov2::Error naming `what`:
/// LibTorch's and OpenCV's, std::bad_alloc, and any other std::exception (TorchScript's
/// ErrorReport and JITException, the standard library's).
template <class F>
auto guarded(const char* what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw RuntimeError(std::string("dinov2: ") + what + ": out of memory");
  } catch (const c10::Error& e) {
    throw RuntimeError(std::string("dinov2: ") + what + ": LibTorch failed: " + torch_message(e));
  } catch (const cv::Exception& e) {
    throw RuntimeError(std::string("dinov2: ") + what + ": OpenCV failed: " + e.what());
  } catch (const std::exception& e) {
    throw RuntimeError(std::string("dinov2: ") + what + ": " + first_line(e.what()));
  }
}

/// Runs `f`, which reads the model or head file `path`: a failure that is not already a
/// dinov2::Error is the file's fault (LibTorch's zip reader, the unpickler, TorchScript's
/// compiler of the file's code) and leaves as ModelFileError; running out of memory as Error.
template <class F>
auto reading_file(const std::string& path, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw RuntimeError("dinov2: out of memory while loading '" + path + "'");
  } catch (const c10::Error& e) {
    throw ModelFileError("dinov2: cannot load '" + path + "' (" + torch_message(e) + ")");
  } catch (const std::exception& e) {
    throw ModelFileError("dinov2: cannot load '" + path + "' (" + first_line(e.what()) + ")");
  }
}

}  // namespace dinov2::detail
