// SPDX-License-Identifier: Apache-2.0
// Private to src/: what a path given to Model::load holds, and building a backbone from weight
// files (Hugging Face safetensors, official .pth) without Python (src/weights.cpp).
#pragma once

#include <torch/script.h>

#include <string>

namespace dinov2::detail {

/// The kinds of path Model::load accepts.
enum class ModelSource {
  kExport,             ///< a TorchScript file written by dinov2-export
  kPackage,            ///< an AOTInductor package (.pt2)
  kOnnx,               ///< an ONNX graph (.onnx) for the OpenVINO backend
  kHuggingFaceFolder,  ///< a folder with config.json and model.safetensors (or pytorch_model.bin)
  kSafetensors,        ///< a bare model.safetensors with Hugging Face key names
  kCheckpoint,         ///< a torch.save checkpoint (.pth): official, or a Hugging Face .bin
};

/// What `path` holds, from its kind and first bytes; a path that is none of the weight kinds is
/// a kExport (check_file then says what is wrong with it).
ModelSource model_source(const std::string& path);

/// A backbone built from weights: the architecture file of the variant filled with them, and the
/// metadata dinov2-export would have written for the same weights.
struct BuiltBackbone {
  torch::jit::Module module;
  std::string metadata;
};

/// Reads the weights at `path` strictly (every key present once, every shape as the variant
/// has it) into the variant's architecture file, or into `architecture_file` when not empty.
/// Throws ModelFileError naming the key, the shape or the file that is wrong.
BuiltBackbone build_backbone(const std::string& path, ModelSource source,
                             const std::string& architecture_file);

/// The SHA-256 of the file at `path`, in lowercase hex.
std::string sha256_file(const std::string& path);

}  // namespace dinov2::detail
