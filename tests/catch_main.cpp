// SPDX-License-Identifier: Apache-2.0
// Catch2 v2 ships no main library: this translation unit provides main() (v3 links Catch2WithMain).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
