// SPDX-License-Identifier: Apache-2.0
// Private to src/: the architecture files compiled into the library. The build generates them
// with `python -m dinov2_export.architecture --cpp` (the exporter's own scripted model with its
// parameters left empty, docs/FORMAT.md) into architectures.cpp in the build folder.
#pragma once

#include <cstddef>
#include <vector>

namespace dinov2::detail {

/// One architecture file: the variant it describes, at its official depth, and its bytes.
struct EmbeddedArchitecture {
  const char* variant;
  const unsigned char* data;
  std::size_t size;
};

/// The files of the eight official variants.
const std::vector<EmbeddedArchitecture>& embedded_architectures();

}  // namespace dinov2::detail
