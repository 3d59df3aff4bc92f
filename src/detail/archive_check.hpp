// SPDX-License-Identifier: Apache-2.0
// Private to src/: a bounds check of the pickles inside a TorchScript archive, run before
// torch::jit::load reads them.
#pragma once

#include <string>

namespace dinov2::detail {

/// Walks every pickle record (data.pkl, constants.pkl, the code's debug pickles) of the zip
/// archive at `path` and returns what is wrong with the first damaged one, or "" when all are
/// sound or the file is not an archive (torch::jit::load then reports that itself).
///
/// LibTorch's unpickler trusts the numbers inside a pickle: a string or bytes opcode that claims
/// 3 GB in a 2 KB record, or a memo index of 2^31, makes it allocate that much before it finds
/// the data missing (seen by fuzz_model and fuzz_head: 4 GB and 16 GB from 140 KB files). Each
/// such length must fit in what is left of its record and each memo index must be at most one
/// past the entries stored so far, as every pickler writes them. An opcode this walk does not
/// know ends the walk: the unpickler stops at the same place.
std::string pickle_problem(const std::string& path);

/// Whether the file at `path` starts with a zip local-file header ("PK\3\4"), as every
/// TorchScript archive, AOTInductor package and head file does; false when it cannot be read.
bool has_zip_magic(const std::string& path);

}  // namespace dinov2::detail
