// SPDX-License-Identifier: Apache-2.0
// The error model: every ErrorCode is thrown as the one class that owns it (error.hpp's table),
// whether a caller branches on the class or on the code; no other combination can be built.
#include "dinov2/error.hpp"

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "dinov2/model.hpp"
#include "dinov2/preprocess.hpp"
#include "support.hpp"

namespace {

using dinov2::ErrorCode;

// Error cannot be built with an arbitrary code, and no class takes a code from its caller.
static_assert(!std::is_constructible<dinov2::Error, ErrorCode, std::string>::value,
              "dinov2::Error must not be constructible with any code");
static_assert(!std::is_constructible<dinov2::InputError, std::string, ErrorCode>::value,
              "InputError must take only its own codes, through its factories");
static_assert(std::is_base_of<dinov2::Error, dinov2::RuntimeError>::value, "");

/// Whether `e` is of the class that owns its code.
bool owned_by_its_class(const dinov2::Error& e) {
  switch (e.code()) {
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kBadInput:
    case ErrorCode::kTooManyTokens:
      return dynamic_cast<const dinov2::InputError*>(&e) != nullptr;
    case ErrorCode::kModelFile:
      return dynamic_cast<const dinov2::ModelFileError*>(&e) != nullptr;
    case ErrorCode::kDevice:
      return dynamic_cast<const dinov2::DeviceError*>(&e) != nullptr;
    case ErrorCode::kRuntime:
      return dynamic_cast<const dinov2::RuntimeError*>(&e) != nullptr;
  }
  return false;
}

}  // namespace

TEST_CASE("each error code is thrown as the class that owns it", "[errors]") {
  using dinov2::test::data_path;
  const std::string model_file = data_path("model_s4.pt");
  struct Case {
    const char* what;
    ErrorCode code;
    std::function<void()> call;
  };
  std::vector<Case> cases = {
      {"a recipe size of 0", ErrorCode::kInvalidArgument, [] { dinov2::Recipe::square(0); }},
      {"a block index out of range", ErrorCode::kInvalidArgument,
       [&] {
         dinov2::Model::load(model_file).intermediate_layers(at::zeros({1, 3, 28, 28}), {99});
       }},
      {"an empty image", ErrorCode::kBadInput, [] { dinov2::Preprocessor()(dinov2::ImageView{}); }},
      {"pixels that are not a multiple of the patch", ErrorCode::kBadInput,
       [&] {
         dinov2::Model::load(model_file).extract_features(at::zeros({1, 3, 30, 28}));
       }},
      {"an input over max_tokens", ErrorCode::kTooManyTokens,
       [&] {
         dinov2::Model::load(model_file, dinov2::Options{}.with_max_tokens(3))
             .extract_features(at::zeros({1, 3, 28, 28}));
       }},
      {"a missing model file", ErrorCode::kModelFile,
       [] { dinov2::Model::load(data_path("no_such_model.pt")); }},
      {"float16 activations that overflow", ErrorCode::kRuntime,
       [] {
         dinov2::Model::load(data_path("model_fp16_overflow.pt"),
                             dinov2::Options{}.with_dtype(dinov2::DType::kFloat16))
             .extract_features(at::zeros({1, 3, 28, 28}));
       }},
  };
  if (!at::hasCUDA()) {
    cases.push_back({"a CUDA model on a machine without CUDA", ErrorCode::kDevice, [&] {
                       dinov2::Model::load(model_file,
                                           dinov2::Options{}.with_device(dinov2::Device::kCUDA));
                     }});
  }
  for (const auto& c : cases) {
    INFO(c.what);
    bool thrown = false;
    try {
      c.call();
    } catch (const dinov2::Error& e) {
      thrown = true;
      INFO(e.what());
      CHECK(e.code() == c.code);
      CHECK(owned_by_its_class(e));
      CHECK(std::string(e.what()) == "dinov2: " + e.message());
    }
    CHECK(thrown);
  }
}
