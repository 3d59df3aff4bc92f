// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Umbrella header: the whole public API of dinov2 in one include.
///
/// Convenient, but it costs compile time: it pulls in Eigen (eigen.hpp) and OpenCV (opencv.hpp)
/// through the adapter headers. In larger projects include only what you use, e.g.
/// dinov2/model.hpp, which needs neither.
#pragma once

#include "dinov2/classifier.hpp"
#include "dinov2/eigen.hpp"
#include "dinov2/error.hpp"
#include "dinov2/features.hpp"
#include "dinov2/heads.hpp"
#include "dinov2/image.hpp"
#include "dinov2/io.hpp"
#include "dinov2/model.hpp"
#include "dinov2/opencv.hpp"
#include "dinov2/options.hpp"
#include "dinov2/patch_grid.hpp"
#include "dinov2/pca.hpp"
#include "dinov2/pipeline.hpp"
#include "dinov2/preprocess.hpp"
#include "dinov2/probe.hpp"
#include "dinov2/retrieval.hpp"
#include "dinov2/runtime.hpp"
#include "dinov2/version.hpp"
