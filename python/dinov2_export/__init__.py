# SPDX-License-Identifier: Apache-2.0
"""Export DINOv2 backbones and heads to TorchScript files for the dinov2 C++ library."""

__version__ = "0.1.0"

#: Version of the file format described in docs/FORMAT.md.
FORMAT_VERSION = 1
