// SPDX-License-Identifier: Apache-2.0
// Weight files into a backbone without Python (detail/weights.hpp): Hugging Face folders and
// safetensors, official .pth checkpoints read with LibTorch's restricted unpickler, renamed to
// the official keys, checked strictly and filled into the variant's architecture file.
#include "detail/weights.hpp"

#include <caffe2/serialize/inline_container.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <openssl/evp.h>
#include <torch/csrc/jit/serialization/unpickler.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>
#include <vector>

#include "detail/architectures.hpp"
#include "detail/archive_check.hpp"
#include "detail/boundary.hpp"
#include "dinov2/error.hpp"
#include "dinov2/io.hpp"

namespace dinov2::detail {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using TensorMap = std::map<std::string, at::Tensor>;

constexpr const char* kArchitectureFile = "dinov2/architecture.json";

[[noreturn]] void bad_weights(const std::string& path, const std::string& problem) {
  throw ModelFileError(fmt::format("dinov2: {}: {}", path, problem));
}

std::string shape_text(at::IntArrayRef shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

// -- reading the files ------------------------------------------------------------------------

/// Every tensor of a safetensors file, as float32.
TensorMap read_safetensors(const std::string& path) {
  try {
    const SafetensorsReader reader(path);
    TensorMap out;
    for (const TensorEntry& e : reader.entries()) {
      out.emplace(e.name, reader.read(e.name).to(at::kFloat).contiguous());
    }
    return out;
  } catch (const InputError& e) {
    throw ModelFileError(e.what());  // a damaged weight file is a model file problem here
  }
}

/// The argument bytes that follow opcode `op` at `pos` in a pickle, or -1 for an opcode of no
/// known protocol or an argument cut by the end.
int64_t argument_bytes(const std::string& p, size_t pos, unsigned char op) {
  const PickleArgument arg = pickle_argument(op);
  switch (arg.kind) {
    case PickleArgument::kFixed:
      return arg.size;
    case PickleArgument::kCounted: {
      if (pos + static_cast<size_t>(arg.size) > p.size()) return -1;
      uint64_t n = 0;
      for (int i = arg.size - 1; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(p[pos + i]);
      return n > p.size() ? -1 : arg.size + static_cast<int64_t>(n);
    }
    case PickleArgument::kLines: {
      size_t at = pos;
      for (int i = 0; i < arg.size; ++i) {
        at = p.find('\n', at);
        if (at == std::string::npos) return -1;
        ++at;
      }
      return static_cast<int64_t>(at - pos);
    }
    default:
      return -1;
  }
}

/// The memo index a one-byte (`short_op`) or four-byte little-endian (`long_op`) memo opcode at
/// `pos` names, or -1 for another opcode. The caller has checked the argument is in the pickle.
int64_t memo_index(const std::string& p, size_t pos, char short_op, char long_op) {
  if (p[pos] == short_op) return static_cast<unsigned char>(p[pos + 1]);
  if (p[pos] != long_op) return -1;
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[pos + 1 + i]);
  return v;
}

/// The memo index a BINPUT or LONG_BINPUT at `pos` stores to, or -1 for another opcode.
int64_t put_index(const std::string& p, size_t pos) { return memo_index(p, pos, 'q', 'r'); }

/// A torch.save pickle rewritten for LibTorch's unpickler, which reads `collections.OrderedDict`
/// as None (it expects one only as a tensor's unused backward hooks) and so loses a state dict,
/// an OrderedDict, and which knows BUILD only for TorchScript objects. Every `OrderedDict()`
/// construction (the class, an empty tuple, REDUCE) becomes an empty dict, and every BUILD is
/// left out with its state: the state dict's `_metadata`, which nothing here needs. Every other
/// opcode, and every other global, reaches the unpickler unchanged, so its refusal of unknown
/// globals still holds.
std::string for_libtorch(const std::string& p, const std::string& path) {
  const std::string ordered_dict = "collections\nOrderedDict\n";
  std::string out;
  out.reserve(p.size());
  std::vector<int64_t> ordered_dict_memo;
  // Where in `out` the construction of each stack entry begins, and the stack sizes at MARKs
  // with their positions: enough to find a BUILD's state and leave it out.
  std::vector<size_t> starts;
  std::vector<std::pair<size_t, size_t>> marks;
  const auto damaged = [&](size_t pos, unsigned char op) {
    bad_weights(path, fmt::format("the checkpoint's pickle has an unknown, cut or misplaced opcode "
                                  "0x{:02x} at byte {}; the file is damaged or not a torch.save "
                                  "file",
                                  op, pos));
  };
  const auto token = [&](size_t pos) -> std::pair<unsigned char, size_t> {
    const auto op = static_cast<unsigned char>(p[pos]);
    const int64_t n = argument_bytes(p, pos + 1, op);
    if (n < 0 || pos + 1 + static_cast<size_t>(n) > p.size()) damaged(pos, op);
    return {op, 1 + static_cast<size_t>(n)};
  };
  const auto empty_call_at = [&](size_t pos) {
    return pos + 1 < p.size() && p[pos] == ')' && p[pos + 1] == 'R';
  };
  // Pops `n` entries and pushes their combination, which begins where the first began.
  const auto combine = [&](size_t n, size_t pos, unsigned char op) {
    if (starts.size() < n) damaged(pos, op);
    const size_t begin = starts[starts.size() - n];
    starts.resize(starts.size() - n);
    starts.push_back(begin);
  };
  // Pops back to the last MARK; returns where the MARK was written.
  const auto pop_mark = [&](size_t pos, unsigned char op) {
    if (marks.empty() || starts.size() < marks.back().first) damaged(pos, op);
    const auto [depth, at] = marks.back();
    marks.pop_back();
    starts.resize(depth);
    return at;
  };
  size_t pos = 0;
  while (pos < p.size()) {
    const auto [op, len] = token(pos);
    const size_t here = out.size();
    if (op == 'c' && p.compare(pos + 1, ordered_dict.size(), ordered_dict) == 0) {
      // GLOBAL OrderedDict [PUT n] EMPTY_TUPLE REDUCE -> EMPTY_DICT [PUT n].
      const size_t next = pos + len;
      size_t put_len = 0;
      if (next < p.size()) {
        const size_t next_len = token(next).second;  // checks the argument is in the pickle
        if (put_index(p, next) >= 0) {
          put_len = next_len;
          ordered_dict_memo.push_back(put_index(p, next));
        }
      }
      if (!empty_call_at(next + put_len)) {
        bad_weights(path, fmt::format("the checkpoint's pickle uses OrderedDict other than as an "
                                      "empty constructor call at byte {}",
                                      pos));
      }
      out += '}';
      out.append(p, next, put_len);
      starts.push_back(here);
      pos = next + put_len + 2;
      continue;
    }
    // BINGET or LONG_BINGET <OrderedDict> EMPTY_TUPLE REDUCE -> EMPTY_DICT. A large checkpoint
    // memoises the class past index 255, which LONG_BINGET then names.
    if ((op == 'h' || op == 'j') && empty_call_at(pos + len) &&
        std::count(ordered_dict_memo.begin(), ordered_dict_memo.end(),
                   memo_index(p, pos, 'h', 'j')) > 0) {
      out += '}';
      starts.push_back(here);
      pos += len + 2;
      continue;
    }
    if (op == 'b') {
      // BUILD: drop the state (the top entry) and the BUILD; the object stays.
      if (starts.size() < 2) damaged(pos, op);
      out.resize(starts.back());
      starts.pop_back();
      pos += len;
      continue;
    }
    out.append(p, pos, len);
    switch (op) {
      case '.':
        return out;
      case 0x80:
      case 0x95:
      case 'p':
      case 'q':
      case 'r':
      case 0x94:  // no stack effect
        break;
      case '(':
        marks.emplace_back(starts.size(), here);
        break;
      case 'Q':
      case 0x85:
        combine(1, pos, op);
        break;
      case 0x86:
      case 'R':
      case 0x81:
      case 0x93:
        combine(2, pos, op);
        break;
      case 0x87:
      case 0x92:
        combine(3, pos, op);
        break;
      case 'a':
      case '0':
        if (starts.empty()) damaged(pos, op);
        starts.pop_back();
        break;
      case 's':
        if (starts.size() < 3) damaged(pos, op);
        starts.resize(starts.size() - 2);
        break;
      case 'u':
      case 'e':
      case 0x90:
      case '1':
        pop_mark(pos, op);
        break;
      case 't':
      case 'l':
      case 'd':
      case 0x91:
      case 'i':
      case 'o':
        starts.push_back(pop_mark(pos, op));
        break;
      default:  // everything else pushes one entry
        starts.push_back(here);
    }
    pos += len;
  }
  bad_weights(path, "the checkpoint's pickle has no STOP opcode; the file is truncated");
}

/// A torch.save checkpoint, read with LibTorch's unpickler. It knows tensors, storages, dicts,
/// lists, tuples and plain values, and refuses any other global (a callable, a class), so
/// reading a checkpoint never runs code from it.
c10::IValue read_checkpoint(const std::string& path) {
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  try {
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
  } catch (const std::exception& e) {
    bad_weights(path,
                fmt::format("not a readable torch.save zip archive ({})", first_line(e.what())));
  }
  // The same bounds check as for TorchScript files: LibTorch's unpickler trusts the lengths and
  // memo indices in a pickle (detail/archive_check.hpp).
  if (const std::string problem = pickle_problem(path); !problem.empty()) {
    bad_weights(path, fmt::format("the checkpoint is damaged ({})", problem));
  }
  if (!reader->hasRecord("data.pkl")) {
    bad_weights(path, "the archive has no data.pkl; it is not a torch.save checkpoint");
  }
  const auto [data, size] = reader->getRecord("data.pkl");
  const std::string pickle =
      for_libtorch(std::string(static_cast<const char*>(data.get()), size), path);
  size_t at = 0;
  const auto read = [&](char* buf, size_t n) {
    const size_t k = std::min(n, pickle.size() - at);
    std::memcpy(buf, pickle.data() + at, k);
    at += k;
    return k;
  };
  const auto read_record = [&](const std::string& name) {
    return std::get<0>(reader->getRecord("data/" + name));
  };
  try {
    torch::jit::Unpickler unpickler(read, /*type_resolver=*/nullptr, /*obj_loader=*/nullptr,
                                    read_record, c10::Device(c10::DeviceType::CPU));
    unpickler.set_version(reader->version());
    return unpickler.parse_ivalue();
  } catch (const c10::Error& e) {
    bad_weights(path, fmt::format("refused or unreadable checkpoint: {}; only tensors, dicts and "
                                  "plain values are read from a .pth",
                                  torch_message(e)));
  }
}

/// The string-keyed dict a checkpoint holds, unwrapped from a training checkpoint's
/// `teacher`/`model`/`state_dict` entry as the exporter does.
c10::impl::GenericDict checkpoint_dict(const c10::IValue& raw, const std::string& path) {
  if (!raw.isGenericDict()) {
    bad_weights(path, fmt::format("expected a state dict, found a {}", raw.tagKind()));
  }
  c10::impl::GenericDict d = raw.toGenericDict();
  const auto has = [](const c10::impl::GenericDict& dict, const char* key) {
    for (const auto& kv : dict) {
      if (kv.key().isString() && kv.key().toStringRef() == key) return true;
    }
    return false;
  };
  for (const char* wrapper : {"teacher", "model", "state_dict"}) {
    if (has(d, "cls_token")) break;
    for (const auto& kv : d) {
      if (kv.key().isString() && kv.key().toStringRef() == wrapper && kv.value().isGenericDict()) {
        d = kv.value().toGenericDict();
        break;
      }
    }
  }
  return d;
}

TensorMap tensors_of(const c10::impl::GenericDict& d, const std::string& path) {
  TensorMap out;
  for (const auto& kv : d) {
    if (!kv.key().isString()) bad_weights(path, "a state dict key is not a string");
    const std::string& key = kv.key().toStringRef();
    if (!kv.value().isTensor()) {
      bad_weights(path, fmt::format("checkpoint entry '{}' is a {}, not a tensor", key,
                                    kv.value().tagKind()));
    }
    out.emplace(key, kv.value().toTensor().to(at::kFloat).contiguous());
  }
  return out;
}

// -- key names --------------------------------------------------------------------------------

/// Official checkpoints: the backbone's keys, without `backbone.`, training heads or the block
/// chunks of the L and g training checkpoints (blocks.{chunk}.{i}.* -> blocks.{i}.*).
TensorMap official_names(TensorMap raw) {
  static const std::regex chunked(R"(^blocks\.(\d+)\.(\d+)\.(.*)$)");
  TensorMap out;
  for (auto& [name, t] : raw) {
    std::string key = name;
    if (starts_with(key, "backbone.")) {
      key = key.substr(9);
    } else if (starts_with(key, "dino_head.") || starts_with(key, "ibot_head.")) {
      continue;
    }
    std::smatch m;
    if (std::regex_match(key, m, chunked))
      key = fmt::format("blocks.{}.{}", m[2].str(), m[3].str());
    out[key] = t;
  }
  return out;
}

bool has_huggingface_names(const TensorMap& t) {
  for (const auto& [name, _] : t) {
    if (starts_with(name, "embeddings.") || starts_with(name, "encoder.layer.") ||
        starts_with(name, "dinov2.")) {
      return true;
    }
  }
  return false;
}

/// Hugging Face Dinov2Model / Dinov2WithRegistersModel keys to official ones; q, k and v (and
/// SwiGLU's gate and up) are concatenated along the output dimension, in that order.
TensorMap official_from_huggingface(const TensorMap& hf, const std::string& path) {
  static const std::map<std::string, std::string> top{
      {"embeddings.cls_token", "cls_token"},
      {"embeddings.mask_token", "mask_token"},
      {"embeddings.position_embeddings", "pos_embed"},
      {"embeddings.register_tokens", "register_tokens"},
      {"embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight"},
      {"embeddings.patch_embeddings.projection.bias", "patch_embed.proj.bias"},
      {"layernorm.weight", "norm.weight"},
      {"layernorm.bias", "norm.bias"}};
  // Saved files use the first spelling; transformers >= 5 uses the second in memory.
  static const std::map<std::string, std::string> rename{{"norm1", "norm1"},
                                                         {"norm2", "norm2"},
                                                         {"attention.output.dense", "attn.proj"},
                                                         {"attention.o_proj", "attn.proj"},
                                                         {"mlp.fc1", "mlp.fc1"},
                                                         {"mlp.fc2", "mlp.fc2"},
                                                         {"mlp.weights_in", "mlp.w12"},
                                                         {"mlp.weights_out", "mlp.w3"},
                                                         {"mlp.down_proj", "mlp.w3"}};
  struct Split {
    const char* target;
    std::vector<const char*> pieces;
  };
  static const std::vector<Split> splits{
      {"attn.qkv",
       {"attention.attention.query", "attention.attention.key", "attention.attention.value"}},
      {"attn.qkv", {"attention.q_proj", "attention.k_proj", "attention.v_proj"}},
      {"mlp.w12", {"mlp.gate_proj", "mlp.up_proj"}}};
  static const std::regex layer(R"(^encoder\.layer\.(\d+)\.(.*)\.(weight|bias|lambda1)$)");

  TensorMap out;
  std::map<std::string, TensorMap> pieces;  // "i.kind" -> piece -> tensor
  for (const auto& [name, t] : hf) {
    std::string key = name;
    for (const char* prefix : {"dinov2.", "model."}) {
      if (starts_with(key, prefix)) key = key.substr(std::strlen(prefix));
    }
    if (starts_with(key, "classifier.")) continue;  // Dinov2ForImageClassification's head
    if (const auto it = top.find(key); it != top.end()) {
      out[it->second] = t;
      continue;
    }
    std::smatch m;
    if (!std::regex_match(key, m, layer)) {
      bad_weights(path, fmt::format("unexpected key '{}' in the Hugging Face checkpoint", key));
    }
    const std::string i = m[1].str(), rest = m[2].str(), kind = m[3].str();
    if (kind == "lambda1" && (rest == "layer_scale1" || rest == "layer_scale2")) {
      out[fmt::format("blocks.{}.ls{}.gamma", i, rest.back())] = t;
      continue;
    }
    if (const auto it = rename.find(rest); it != rename.end() && kind != "lambda1") {
      out[fmt::format("blocks.{}.{}.{}", i, it->second, kind)] = t;
      continue;
    }
    bool known = false;
    for (const Split& s : splits) {
      known = known || std::find(s.pieces.begin(), s.pieces.end(), rest) != s.pieces.end();
    }
    if (!known || kind == "lambda1") {
      bad_weights(path, fmt::format("unexpected key '{}' in the Hugging Face checkpoint", key));
    }
    pieces[i + "." + kind][rest] = t;
  }
  for (const auto& [ik, found] : pieces) {
    const std::string i = ik.substr(0, ik.find('.')), kind = ik.substr(ik.find('.') + 1);
    for (const Split& s : splits) {
      std::vector<at::Tensor> parts;
      for (const char* piece : s.pieces) {
        const auto it = found.find(piece);
        if (it != found.end()) parts.push_back(it->second);
      }
      if (parts.empty()) continue;
      if (parts.size() != s.pieces.size()) {
        for (const char* piece : s.pieces) {
          if (!found.count(piece)) {
            bad_weights(path, fmt::format("missing key 'encoder.layer.{}.{}.{}' in the Hugging "
                                          "Face checkpoint",
                                          i, piece, kind));
          }
        }
      }
      out[fmt::format("blocks.{}.{}.{}", i, s.target, kind)] = at::cat(parts, 0);
    }
  }
  return out;
}

// -- architecture files -----------------------------------------------------------------------

/// The architecture.json of the architecture file `bytes`.
json read_spec(const std::string& bytes, const std::string& origin) {
  std::istringstream in(bytes);
  caffe2::serialize::PyTorchStreamReader reader(&in);
  const std::string record = std::string("extra/") + kArchitectureFile;
  if (!reader.hasRecord(record)) {
    bad_weights(origin, fmt::format("not a dinov2 architecture file (no {} inside); write one "
                                    "with python -m dinov2_export.architecture",
                                    kArchitectureFile));
  }
  const auto [data, size] = reader.getRecord(record);
  json spec = json::parse(static_cast<const char*>(data.get()),
                          static_cast<const char*>(data.get()) + size, nullptr, false);
  if (spec.is_discarded() || !spec.is_object() ||
      spec.value("format", "") != "dinov2-architecture" || !spec.contains("metadata") ||
      !spec.contains("parameters")) {
    bad_weights(origin,
                fmt::format("{} is not a dinov2 architecture description", kArchitectureFile));
  }
  return spec;
}

struct Architecture {
  std::string bytes;  // the TorchScript archive
  json spec;
  std::string origin;  // for messages: the file, or "the built-in <variant>"
};

Architecture builtin_architecture(const EmbeddedArchitecture& a) {
  Architecture out{std::string(reinterpret_cast<const char*>(a.data), a.size),
                   {},
                   fmt::format("the built-in architecture of {}", a.variant)};
  out.spec = read_spec(out.bytes, out.origin);
  return out;
}

/// The facts read from the weights' shapes, before any architecture is chosen.
struct Shapes {
  int64_t width = 0;
  int64_t registers = 0;
  int64_t depth = 0;
  int64_t grid = 0;
  bool swiglu = false;
};

Shapes infer_shapes(const TensorMap& sd, const std::string& path) {
  Shapes s;
  const auto cls = sd.find("cls_token");
  if (cls == sd.end()) {
    bad_weights(path, "missing key 'cls_token' (expected shape [1, 1, D]); not a DINOv2 backbone");
  }
  s.width = cls->second.size(-1);
  if (const auto r = sd.find("register_tokens"); r != sd.end() && r->second.dim() == 3) {
    s.registers = r->second.size(1);
  }
  s.swiglu = sd.count("blocks.0.mlp.w12.weight") > 0;
  static const std::regex block(R"(^blocks\.(\d+)\..*)");
  for (const auto& [name, _] : sd) {
    std::smatch m;
    if (std::regex_match(name, m, block))
      s.depth = std::max<int64_t>(s.depth, std::stoll(m[1]) + 1);
  }
  const auto pos = sd.find("pos_embed");
  if (pos == sd.end() || pos->second.dim() != 3) {
    bad_weights(path,
                fmt::format("missing key 'pos_embed' (expected shape [1, 1370, {}])", s.width));
  }
  const int64_t n = pos->second.size(1) - 1;
  s.grid =
      static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(std::max<int64_t>(n, 0)))));
  if (n < 1 || s.grid * s.grid != n) {
    bad_weights(path,
                fmt::format("pos_embed holds {} patch positions, which is not a square grid", n));
  }
  return s;
}

Architecture choose_architecture(const Shapes& s, const std::string& architecture_file,
                                 const std::string& path) {
  if (!architecture_file.empty()) {
    std::ifstream in(architecture_file, std::ios::binary);
    if (!in) bad_weights(architecture_file, "cannot open the architecture file");
    Architecture a{std::string(std::istreambuf_iterator<char>(in), {}), {}, architecture_file};
    try {
      a.spec = read_spec(a.bytes, a.origin);
    } catch (const c10::Error& e) {
      bad_weights(architecture_file,
                  fmt::format("not a readable architecture file ({})", torch_message(e)));
    }
    return a;
  }
  for (const EmbeddedArchitecture& e : embedded_architectures()) {
    Architecture a = builtin_architecture(e);
    const json& m = a.spec["metadata"];
    if (m.value("embed_dim", 0) == s.width && m.value("num_register_tokens", -1) == s.registers) {
      if ((m.value("ffn", "") == "swiglu") != s.swiglu) {
        bad_weights(path, fmt::format("width {} with {} FFN matches no DINOv2 variant", s.width,
                                      s.swiglu ? "a SwiGLU" : "an MLP"));
      }
      return a;
    }
  }
  bad_weights(path, fmt::format("no DINOv2 variant has width {} with {} register tokens; widths "
                                "are 384 (S), 768 (B), 1024 (L), 1536 (g) with 0 or 4 registers",
                                s.width, s.registers));
}

/// Refuses a Hugging Face config.json that contradicts the weights or describes a model this
/// library does not reproduce.
void check_config(const fs::path& folder, const json& meta, const Shapes& s) {
  const fs::path file = folder / "config.json";
  std::ifstream in(file);
  if (!in) return;
  const json cfg = json::parse(in, nullptr, false);
  const std::string where = file.string();
  if (cfg.is_discarded() || !cfg.is_object()) bad_weights(where, "not valid JSON");
  const auto expect = [&](const char* field, const json& want, const std::string& why) {
    if (cfg.contains(field) && cfg[field] != want) {
      bad_weights(where, fmt::format("\"{}\" is {}, but {}", field, cfg[field].dump(), why));
    }
  };
  if (cfg.contains("model_type") && cfg["model_type"] != "dinov2" &&
      cfg["model_type"] != "dinov2_with_registers") {
    bad_weights(where, fmt::format("\"model_type\" is {}, not a DINOv2 backbone",
                                   cfg["model_type"].dump()));
  }
  expect("hidden_size", s.width, fmt::format("the weights have width {}", s.width));
  expect("num_hidden_layers", s.depth, fmt::format("the weights hold {} blocks", s.depth));
  expect("num_register_tokens", s.registers,
         fmt::format("the weights hold {} register tokens", s.registers));
  expect(
      "num_attention_heads", meta["num_heads"],
      fmt::format("{} has {} heads", meta["variant"].get<std::string>(), meta["num_heads"].dump()));
  expect("patch_size", meta["patch_size"], "DINOv2 uses 14x14 patches");
  expect("use_swiglu_ffn", s.swiglu,
         fmt::format("the weights have {} FFN", s.swiglu ? "a SwiGLU" : "an MLP"));
  expect("hidden_act", "gelu", "the official models use exact GELU");
  expect("image_size", s.grid * meta["patch_size"].get<int64_t>(),
         fmt::format("the position embedding holds a {}x{} grid", s.grid, s.grid));
  if (cfg.contains("layer_norm_eps") && cfg["layer_norm_eps"].is_number() &&
      std::abs(cfg["layer_norm_eps"].get<double>() - 1e-6) > 1e-12) {
    bad_weights(where, fmt::format("\"layer_norm_eps\" is {}, but DINOv2 uses 1e-6",
                                   cfg["layer_norm_eps"].dump()));
  }
}

/// Every expected key present with its shape, and nothing else, as the exporter checks.
void check_strict(const TensorMap& sd, const json& expected, const std::string& path) {
  for (const auto& [key, shape] : expected.items()) {
    const auto it = sd.find(key);
    const auto want = shape.get<std::vector<int64_t>>();
    if (it == sd.end()) {
      bad_weights(path, fmt::format("missing key '{}' (expected shape {})", key, shape_text(want)));
    }
    if (it->second.sizes() != at::IntArrayRef(want)) {
      bad_weights(path, fmt::format("key '{}' has shape {}, expected {}", key,
                                    shape_text(it->second.sizes()), shape_text(want)));
    }
  }
  for (const auto& [key, _] : sd) {
    if (!expected.contains(key))
      bad_weights(path, fmt::format("unexpected key '{}' for this model", key));
  }
}

/// Sets the parameter `dotted` (e.g. blocks.0.attn.qkv.weight) of `module` to `value`.
void set_parameter(torch::jit::Module module, const std::string& dotted, const at::Tensor& value) {
  size_t start = 0;
  for (size_t dot = dotted.find('.'); dot != std::string::npos; dot = dotted.find('.', start)) {
    module = torch::jit::Module(module.attr(dotted.substr(start, dot - start)).toObject());
    start = dot + 1;
  }
  module.register_parameter(dotted.substr(start), value, /*is_buffer=*/false);
}

}  // namespace

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) bad_weights(path, "cannot open the file to compute its digest");
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    throw RuntimeError("dinov2: OpenSSL could not start a SHA-256 digest");
  }
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) bad_weights(path, "read error while computing its digest");
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &n);
  std::string hex;
  for (unsigned int i = 0; i < n; ++i) hex += fmt::format("{:02x}", digest[i]);
  return hex;
}

ModelSource model_source(const std::string& path) {
  std::error_code ec;
  if (path.empty() || !fs::exists(path, ec)) return ModelSource::kExport;
  if (fs::is_directory(path, ec)) return ModelSource::kHuggingFaceFolder;
  if (fs::path(path).extension() == ".pt2") return ModelSource::kPackage;
  if (fs::path(path).extension() == ".onnx") return ModelSource::kOnnx;
  if (fs::path(path).extension() == ".safetensors") return ModelSource::kSafetensors;
  std::ifstream in(path, std::ios::binary);
  unsigned char head[9] = {};
  in.read(reinterpret_cast<char*>(head), 9);
  if (in.gcount() == 9 && head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4) {
    try {
      caffe2::serialize::PyTorchStreamReader reader(path);
      // A TorchScript archive has its code and constants; torch.save writes data.pkl alone.
      if (reader.hasRecord("data.pkl") && !reader.hasRecord("constants.pkl")) {
        return ModelSource::kCheckpoint;
      }
    } catch (const std::exception&) {
      return ModelSource::kExport;  // the TorchScript loader says what is wrong
    }
    return ModelSource::kExport;
  }
  if (in.gcount() == 9 && head[8] == '{') return ModelSource::kSafetensors;
  if (in.gcount() >= 2 && head[0] == 0x80 && head[1] <= 5) {
    throw ModelFileError(fmt::format(
        "dinov2: '{}' is a checkpoint in torch.save's legacy format (before PyTorch 1.6), which is "
        "read only by Python; re-save it with torch.save(torch.load(f), g), or export it with "
        "dinov2-export",
        path));
  }
  return ModelSource::kExport;
}

BuiltBackbone build_backbone(const std::string& path, ModelSource source,
                             const std::string& architecture_file) {
  std::string weights_file = path;
  if (source == ModelSource::kHuggingFaceFolder) {
    const fs::path folder(path);
    for (const char* name : {"model.safetensors", "pytorch_model.bin"}) {
      if (fs::exists(folder / name)) {
        weights_file = (folder / name).string();
        break;
      }
    }
    if (weights_file == path) {
      bad_weights(path,
                  "no model.safetensors or pytorch_model.bin in the folder; give a Hugging "
                  "Face model folder, a weight file or a dinov2-export .pt file");
    }
  }
  // The digest reads the whole file once more: on a thread of its own, overlapping the reading
  // and checking below (for L/14, 2.3 s -> see docs/BENCHMARKS.md).
  std::future<std::string> digest = std::async(std::launch::async, sha256_file, weights_file);
  const bool safetensors =
      fs::path(weights_file).extension() == ".safetensors" || source == ModelSource::kSafetensors;
  TensorMap sd;
  std::string label = "huggingface";
  if (safetensors) {
    sd = official_from_huggingface(read_safetensors(weights_file), weights_file);
  } else {
    TensorMap raw =
        tensors_of(checkpoint_dict(read_checkpoint(weights_file), weights_file), weights_file);
    if (has_huggingface_names(raw)) {
      sd = official_from_huggingface(raw, weights_file);
    } else {
      sd = official_names(std::move(raw));
      label = "official";
    }
  }
  const Shapes shapes = infer_shapes(sd, weights_file);
  Architecture arch = choose_architecture(shapes, architecture_file, weights_file);
  json meta = arch.spec["metadata"];
  if (source == ModelSource::kHuggingFaceFolder) check_config(path, meta, shapes);
  const int64_t depth = meta.value("depth", 0);
  if (meta.value("embed_dim", 0) != shapes.width ||
      meta.value("num_register_tokens", -1) != shapes.registers || depth != shapes.depth) {
    bad_weights(weights_file,
                fmt::format("the weights hold width {}, {} register tokens and {} blocks, but {} "
                            "describes {} ({} blocks){}",
                            shapes.width, shapes.registers, shapes.depth, arch.origin,
                            meta.value("variant", "?"), depth,
                            architecture_file.empty()
                                ? "; a model with another depth needs an architecture file "
                                  "(Options::architecture_file)"
                                : ""));
  }
  json expected = arch.spec["parameters"];
  expected["pos_embed"] = {1, 1 + shapes.grid * shapes.grid, shapes.width};
  check_strict(sd, expected, weights_file);

  std::istringstream bytes(arch.bytes);
  BuiltBackbone out;
  out.module =
      torch::jit::load(bytes, c10::Device(c10::DeviceType::CPU), /*load_debug_files=*/false);
  for (const auto& [key, _] : expected.items()) set_parameter(out.module, key, sd.at(key));
  out.module.setattr("pos_grid", c10::IValue(shapes.grid));
  meta["pos_grid"] = {shapes.grid, shapes.grid};
  meta["weights"] = {{"source", label}, {"sha256", digest.get()}};
  out.metadata = meta.dump(2);
  return out;
}

}  // namespace dinov2::detail
