// SPDX-License-Identifier: Apache-2.0
// Private to src/: the process-wide settings (dinov2/runtime.hpp) as Model::load applies them.
#pragma once

namespace dinov2::detail {

/// Applies the default RuntimeSettings unless configure_runtime() was called; once per process.
void ensure_runtime_configured();

}  // namespace dinov2::detail
