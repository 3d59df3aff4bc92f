// SPDX-License-Identifier: Apache-2.0
#include "detail/archive_check.hpp"

#include <caffe2/serialize/inline_container.h>
#include <fmt/format.h>

#include <array>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <initializer_list>
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
    if (op == '.') return "";  // STOP
    const PickleArgument arg = pickle_argument(op);
    switch (arg.kind) {
      case PickleArgument::kFixed:
        if (left() < static_cast<size_t>(arg.size)) {
          return fmt::format("opcode 0x{:02X} at byte {} is cut off by the end", op, at);
        }
        if (op == 'q' || op == 'r') {  // BINPUT, LONG_BINPUT
          const uint64_t index = little(data + pos, arg.size);
          if (index > memo) {
            return fmt::format("memo index {} at byte {} is past the {} entries stored so far",
                               index, at, memo);
          }
          if (index == memo) ++memo;
        }
        if (op == 0x94) ++memo;  // MEMOIZE
        pos += static_cast<size_t>(arg.size);
        break;
      case PickleArgument::kCounted: {
        if (left() < static_cast<size_t>(arg.size)) {
          return fmt::format("opcode 0x{:02X} at byte {} is cut off by the end", op, at);
        }
        const uint64_t length = little(data + pos, arg.size);
        pos += static_cast<size_t>(arg.size);
        if (length > left()) {
          return fmt::format("opcode 0x{:02X} at byte {} claims {} bytes, but {} are left", op, at,
                             length, left());
        }
        pos += static_cast<size_t>(length);
        break;
      }
      case PickleArgument::kLines:
        for (int i = 0; i < arg.size; ++i) {
          while (pos < size && data[pos] != '\n') ++pos;
          if (pos == size) return fmt::format("opcode '{}' at byte {} has no end of line", op, at);
          ++pos;
        }
        if (op == 'p') ++memo;  // PUT
        break;
      case PickleArgument::kUnknown:
        return "";  // an opcode the unpickler refuses here too
    }
  }
  return "";
}

bool is_pickle(const std::string& name) {
  return name.size() >= 3 && name.compare(name.size() - 3, 3, "pkl") == 0;  // .pkl, .debug_pkl
}

}  // namespace

PickleArgument pickle_argument(uint8_t op) {
  // Opcodes by argument layout (pickletools' table, protocols 0 to 5).
  static const std::array<PickleArgument, 256> table = [] {
    std::array<PickleArgument, 256> t{};
    const auto set = [&t](std::initializer_list<int> ops, PickleArgument::Kind kind, int size) {
      for (const int op : ops) t[static_cast<size_t>(op)] = {kind, size};
    };
    // No argument: STOP, MARK, the tuple, list, dict and set builders, REDUCE, BUILD, NEWOBJ,
    // BINPERSID, NONE, booleans, POP, DUP, STACK_GLOBAL, MEMOIZE, buffers.
    set({'.', '(',  't',  ')',  0x85, 0x86, 0x87, '}',  'u',  's', ']',  'e',
         'a', 'l',  'd',  'o',  0x8f, 0x90, 0x91, 'Q',  'R',  'b', 0x81, 0x92,
         'N', 0x88, 0x89, 0x93, '0',  '1',  '2',  0x94, 0x97, 0x98},
        PickleArgument::kFixed, 0);
    // PROTO, BININT1, BINGET, BINPUT, EXT1
    set({0x80, 'K', 'h', 'q', 0x82}, PickleArgument::kFixed, 1);
    set({'M', 0x83}, PickleArgument::kFixed, 2);            // BININT2 EXT2
    set({'J', 'j', 'r', 0x84}, PickleArgument::kFixed, 4);  // BININT LONG_BINGET LONG_BINPUT EXT4
    set({'G', 0x95}, PickleArgument::kFixed, 8);            // BINFLOAT FRAME
    // Counted: LONG1, SHORT_BINUNICODE, SHORT_BINBYTES, SHORT_BINSTRING; LONG4, BINUNICODE,
    // BINBYTES, BINSTRING; BINUNICODE8, BINBYTES8, BYTEARRAY8.
    set({0x8a, 0x8c, 'C', 'U'}, PickleArgument::kCounted, 1);
    set({0x8b, 'X', 'B', 'T'}, PickleArgument::kCounted, 4);
    set({0x8d, 0x8e, 0x96}, PickleArgument::kCounted, 8);
    set({'c', 'i'}, PickleArgument::kLines, 2);  // GLOBAL, INST: module and name
    set({'P', 'I', 'L', 'F', 'S', 'V', 'p', 'g'}, PickleArgument::kLines, 1);
    return t;
  }();
  return table[op];
}

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
