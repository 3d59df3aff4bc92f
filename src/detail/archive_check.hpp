// SPDX-License-Identifier: Apache-2.0
// Private to src/: a bounds check of the pickles inside a TorchScript archive, run before
// torch::jit::load reads them.
#pragma once

#include <cstdint>
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

/// How the argument of a pickle opcode (protocols 0 to 5) is laid out after the opcode byte.
struct PickleArgument {
  enum Kind {
    kFixed,    ///< `size` bytes
    kCounted,  ///< a little-endian length of `size` bytes, then that many bytes
    kLines,    ///< `size` newline-terminated lines
    kUnknown,  ///< not an opcode of protocols 0 to 5
  };
  Kind kind = kUnknown;
  int size = 0;
};

/// The argument layout of opcode `op`; the one table of opcodes, shared by the bounds check here
/// and the checkpoint reader (src/weights.cpp).
PickleArgument pickle_argument(uint8_t op);

/// Whether the file at `path` starts with a zip local-file header ("PK\3\4"), as every
/// TorchScript archive, AOTInductor package and head file does; false when it cannot be read.
bool has_zip_magic(const std::string& path);

}  // namespace dinov2::detail
