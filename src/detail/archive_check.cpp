// SPDX-License-Identifier: Apache-2.0
#include "detail/archive_check.hpp"

#include <caffe2/serialize/inline_container.h>
#include <fmt/format.h>

#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>

namespace dinov2::detail {

namespace {

uint64_t little(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

/// The problem with one pickle, or "".
std::string walk(const uint8_t* data, size_t size) {
  size_t pos = 0;
  uint64_t memo = 0;  // entries stored so far (PUT, BINPUT, LONG_BINPUT, MEMOIZE)
  auto left = [&] { return size - pos; };
  while (pos < size) {
    const size_t at = pos;
    const uint8_t op = data[pos++];
    // Fixed-size arguments.
    int fixed = -1;
    switch (op) {
      case '.':  // STOP
        return "";
      case '(':
      case 't':
      case ')':
      case 0x85:
      case 0x86:
      case 0x87:
      case '}':
      case 'u':
      case 's':
      case ']':
      case 'e':
      case 'a':
      case 'Q':
      case 'R':
      case 'b':
      case 0x81:
      case 'N':
      case 0x88:
      case 0x89:
      case 0x93:
      case '0':
      case '1':
      case '2':
      case 'l':
      case 'd':
      case 'o':
      case 0x90:
      case 0x91:
      case 0x92:
        fixed = 0;
        break;
      case 0x94:  // MEMOIZE
        ++memo;
        fixed = 0;
        break;
      case 0x80:
      case 'K':
      case 'h':
      case 'q':  // PROTO, BININT1, BINGET, BINPUT
        fixed = 1;
        break;
      case 'M':  // BININT2
        fixed = 2;
        break;
      case 'J':
      case 'j':
      case 'r':  // BININT, LONG_BINGET, LONG_BINPUT
        fixed = 4;
        break;
      case 'G':
      case 0x95:  // BINFLOAT, FRAME
        fixed = 8;
        break;
      default:
        break;
    }
    if (fixed >= 0) {
      if (left() < static_cast<size_t>(fixed)) {
        return fmt::format("opcode 0x{:02X} at byte {} is cut off by the end", op, at);
      }
      if (op == 'q' || op == 'r') {
        const uint64_t index = little(data + pos, fixed);
        if (index > memo) {
          return fmt::format("memo index {} at byte {} is past the {} entries stored so far", index,
                             at, memo);
        }
        if (index == memo) ++memo;
      }
      pos += static_cast<size_t>(fixed);
      continue;
    }
    // Length-prefixed data.
    int prefix = 0;
    switch (op) {
      case 0x8A:
      case 0x8C:
      case 'C':
      case 'U':  // LONG1, SHORT_BINUNICODE, SHORT_BINBYTES, ..
        prefix = 1;
        break;
      case 0x8B:
      case 'X':
      case 'B':
      case 'T':  // LONG4, BINUNICODE, BINBYTES, BINSTRING
        prefix = 4;
        break;
      case 0x8D:
      case 0x8E:
      case 0x96:  // BINUNICODE8, BINBYTES8, BYTEARRAY8
        prefix = 8;
        break;
      default:
        break;
    }
    if (prefix > 0) {
      if (left() < static_cast<size_t>(prefix)) {
        return fmt::format("opcode 0x{:02X} at byte {} is cut off by the end", op, at);
      }
      const uint64_t length = little(data + pos, prefix);
      pos += static_cast<size_t>(prefix);
      if (length > left()) {
        return fmt::format("opcode 0x{:02X} at byte {} claims {} bytes, but {} are left", op, at,
                           length, left());
      }
      pos += static_cast<size_t>(length);
      continue;
    }
    // Newline-terminated arguments: GLOBAL has two, the text forms one.
    int lines = 0;
    if (op == 'c') lines = 2;
    if (op == 'P' || op == 'I' || op == 'L' || op == 'F' || op == 'S' || op == 'V' || op == 'p' ||
        op == 'g') {
      lines = 1;
    }
    if (lines == 0) return "";  // an opcode the unpickler refuses here too
    for (int i = 0; i < lines; ++i) {
      while (pos < size && data[pos] != '\n') ++pos;
      if (pos == size) return fmt::format("opcode '{}' at byte {} has no end of line", op, at);
      ++pos;
    }
    if (op == 'p') ++memo;
  }
  return "";
}

bool is_pickle(const std::string& name) {
  return name.size() >= 3 && name.compare(name.size() - 3, 3, "pkl") == 0;  // .pkl, .debug_pkl
}

}  // namespace

std::string pickle_problem(const std::string& path) {
  try {
    std::error_code ec;
    const auto file_size = std::filesystem::file_size(path, ec);
    if (ec) return "";
    caffe2::serialize::PyTorchStreamReader reader(path);
    for (const auto& name : reader.getAllRecords()) {
      if (!is_pickle(name)) continue;
      // The zip directory's size is a claim too: an uncompressed record lies inside the file.
      const size_t size = reader.getRecordSize(name);
      if (size > file_size) {
        return fmt::format("record '{}' claims {} bytes in a file of {}", name, size, file_size);
      }
      auto [bytes, n] = reader.getRecord(name);
      const std::string problem = walk(static_cast<const uint8_t*>(bytes.get()), n);
      if (!problem.empty()) return fmt::format("the pickle '{}' is damaged: {}", name, problem);
    }
  } catch (const std::exception&) {
    // Not a readable archive: torch::jit::load says so with its own words.
  }
  return "";
}

bool has_zip_magic(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {0, 0, 0, 0};
  in.read(magic, 4);
  return in && magic[0] == 'P' && magic[1] == 'K' && magic[2] == 3 && magic[3] == 4;
}

}  // namespace dinov2::detail
