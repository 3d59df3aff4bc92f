// SPDX-License-Identifier: Apache-2.0
// Private to src/: reading typed fields of file metadata with nlohmann/json, where an integer
// must fit its C++ type exactly (nlohmann's get<int>() truncates 2^32 + 1 to 1).
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <type_traits>
#include <vector>

namespace dinov2::detail {

template <class T>
struct is_vector : std::false_type {};
template <class U>
struct is_vector<std::vector<U>> : std::true_type {};

/// `j.get<T>()`, except that an integer, or each integer of a vector of integers, that does not
/// fit T throws std::out_of_range. Other type mismatches throw nlohmann's type_error.
template <class T>
T exact_get(const nlohmann::json& j) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    if (j.is_number_unsigned()) {
      const auto v = j.get<std::uint64_t>();
      if (v > static_cast<std::uint64_t>(std::numeric_limits<T>::max())) {
        throw std::out_of_range("integer out of range");
      }
      return static_cast<T>(v);
    }
    if (j.is_number_integer()) {
      const auto v = j.get<std::int64_t>();
      if (v < static_cast<std::int64_t>(std::numeric_limits<T>::min()) ||
          (v > 0 && static_cast<std::uint64_t>(v) >
                        static_cast<std::uint64_t>(std::numeric_limits<T>::max()))) {
        throw std::out_of_range("integer out of range");
      }
      return static_cast<T>(v);
    }
    return j.get<T>();  // throws type_error for a non-integer
  } else if constexpr (is_vector<T>::value) {
    if (!j.is_array()) return j.get<T>();  // throws type_error
    T out;
    for (const auto& item : j) out.push_back(exact_get<typename T::value_type>(item));
    return out;
  } else {
    return j.get<T>();
  }
}

}  // namespace dinov2::detail
