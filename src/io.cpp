// SPDX-License-Identifier: Apache-2.0
// Files written atomically (include/dinov2/io.hpp); the tensor formats are in safetensors.cpp and
// npy.cpp.
#include "dinov2/io.hpp"

#include "detail/tensor_file.hpp"

namespace dinov2 {

void write_file_atomically(const std::string& path, const std::string& text) {
  detail::AtomicFile file(path);
  file.write(text.data(), text.size());
  file.commit();
}

}  // namespace dinov2
