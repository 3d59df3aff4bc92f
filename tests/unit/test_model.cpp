// SPDX-License-Identifier: Apache-2.0
// Model, Features and the Eigen views against PyTorch references (tests/refgen/model_refs.py).
//
// Tolerances: the C++ library runs the same TorchScript graph with the same LibTorch kernels as
// the Python reference, so float32 results agree to rounding noise; 1e-5 absolute on values of
// magnitude <= ~8 allows a few ulps of reassociation (e.g. a different thread count) and nothing
// more. Attention probabilities lie in [0, 1]: 1e-6.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/cuda.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "dinov2/eigen.hpp"
#include "dinov2/error.hpp"
#include "dinov2/model.hpp"
#include "dinov2/pipeline.hpp"
#include "dinov2/runtime.hpp"
#include "support.hpp"

using dinov2::test::ContainsSubstring;
using dinov2::test::data_path;
using dinov2::test::load_tensors;
using dinov2::test::max_abs_diff;
using dinov2::test::message_of;

namespace {

constexpr double kTol = 1e-5;
constexpr double kAttentionTol = 1e-6;

using Refs = std::map<std::string, at::Tensor>;

/// Models and references are loaded once per process (each CTest test is its own process).
/// `fused`: Options::fused_kernels (the default is true).
const dinov2::Model& model(const std::string& name, bool fused = true) {
  static std::map<std::pair<std::string, bool>, dinov2::Model> cache;
  const auto key = std::make_pair(name, fused);
  auto it = cache.find(key);
  if (it == cache.end()) {
    const auto options = dinov2::Options{}.with_fused_kernels(fused);
    it = cache.emplace(key, dinov2::Model::load(data_path(name + ".pt"), options)).first;
  }
  return it->second;
}

const Refs& refs(const std::string& name) {
  static std::map<std::string, Refs> cache;
  auto it = cache.find(name);
  if (it == cache.end()) it = cache.emplace(name, load_tensors(data_path(name + "_refs.pt"))).first;
  return it->second;
}

/// The sizes in a reference file: the suffixes "HxW_bB" of its inputs "x_HxW_bB".
std::vector<std::string> input_keys(const Refs& r) {
  std::vector<std::string> keys;
  for (const auto& [name, tensor] : r) {
    if (name.rfind("x_", 0) == 0) keys.push_back(name.substr(2));
  }
  return keys;
}

/// [B, h*w, D] reference patches on the [B, h, w, D] grid of `like`.
at::Tensor on_grid(const at::Tensor& ref, const at::Tensor& like) {
  return ref.reshape(like.sizes());
}

/// Prints a measured number when DINOV2_TEST_VERBOSE is set (for reports; the CHECKs decide).
void report(const std::string& what, double value) {
  if (std::getenv("DINOV2_TEST_VERBOSE")) std::printf("%-60s %.7g\n", what.c_str(), value);
}

/// How closely the C++ features must equal the PyTorch references of tests/refgen/model_refs.py,
/// and why.
struct Exactness {
  double tol;
  std::string why;
};

/// Unfused, the library runs the file's graph with the kernels PyTorch ran, so its results are
/// bit-identical when this process runs under the ISA the references were made under (the same
/// ATen capability and oneDNN limit; the generator records them). Fused float32 rounds as
/// oneDNN's kernel for the CPU does: bit-identical on the AVX-512 Xeon where it was first
/// measured, but 1.07e-6 off on an AVX2 EPYC and 4.3e-6 off on an AVX-512 EPYC (Zen 4, ATen
/// AVX512 as on the Xeon), so the ATen capability does not tell: fused is held to kTol, and
/// everything else under another ISA than the references' too.
Exactness exactness(bool fused) {
  static const nlohmann::json made = [] {
    std::ifstream in(data_path("model_refs_machine.json"));
    REQUIRE(in.good());
    return nlohmann::json::parse(in);
  }();
  const dinov2::CpuInfo cpu = dinov2::cpu_info();
  if (made.at("aten_capability") != cpu.aten_capability ||
      made.at("onednn_limit") != cpu.onednn_limit) {
    return {kTol, "the references were made under ATen " +
                      made.at("aten_capability").get<std::string>() + " with ONEDNN_MAX_CPU_ISA='" +
                      made.at("onednn_limit").get<std::string>() + "', this process runs ATen " +
                      cpu.aten_capability + " with ONEDNN_MAX_CPU_ISA='" + cpu.onednn_limit +
                      "': other kernels, so within kTol instead of bit-identical"};
  }
  if (!fused) return {0.0, "unfused under the references' ISA: bit-identical"};
  return {kTol, "fused under ATen " + cpu.aten_capability +
                    ": oneDNN's fused linear + GELU rounds as its kernel for this CPU does, "
                    "unlike at::linear + gelu, so within kTol"};
}

/// The exactness for `fused`, with a warning in the test's output whenever it is not bit-exact.
double tolerance(bool fused) {
  const Exactness e = exactness(fused);
  if (e.tol > 0) WARN("tolerance " << e.tol << ": " << e.why);
  return e.tol;
}

at::Tensor zeros(int64_t b, int64_t c, int64_t h, int64_t w) { return at::zeros({b, c, h, w}); }

/// LibTorch's own verdict on oneDNN bfloat16 (torch.ops.mkldnn._is_mkldnn_bf16_supported), asked
/// independently of the library.
bool onednn_has_bfloat16() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("mkldnn::_is_mkldnn_bf16_supported", "")
      .typed<bool()>()
      .call();
}

}  // namespace

static_assert(!std::is_copy_constructible_v<dinov2::Model>, "Model is move-only");
static_assert(std::is_nothrow_move_constructible_v<dinov2::Model>, "Model moves cheaply");

TEST_CASE("Model::load reads the architecture and provenance from the file metadata", "[model]") {
  const auto& info = model("model_s4reg").info();
  CHECK(info.variant == "dinov2_vits14_reg");
  CHECK(info.embed_dim == 384);
  CHECK(info.depth == 4);
  CHECK(info.num_heads == 6);
  CHECK(info.patch_size == 14);
  CHECK(info.num_register_tokens == 4);
  CHECK(info.ffn == "mlp");
  CHECK(info.pos_grid_h == 37);
  CHECK(info.pos_grid_w == 37);
  CHECK(std::abs(info.mean[0] - 0.485f) < 1e-7f);
  CHECK(std::abs(info.std[2] - 0.225f) < 1e-7f);
  CHECK(info.default_resolution == 518);
  CHECK(info.dtype == "float32");
  CHECK(info.weights_source == "random");
  CHECK(info.weights_sha256.size() == 64);
  CHECK(info.format_version == 1);
  CHECK_THAT(info.metadata_json, ContainsSubstring("\"dinov2-backbone\""));
  CHECK(model("model_s4").info().num_register_tokens == 0);
  CHECK(model("model_s12").info().depth == 12);
}

TEST_CASE("features equal PyTorch for every size and batch, with and without registers",
          "[model][parity]") {
  const std::string name = GENERATE(as<std::string>{}, "model_s4reg", "model_s4", "model_s12");
  // Unfused, the C++ library runs the file's graph and reproduces PyTorch bit for bit under the
  // references' ISA; fused (the default), the oneDNN linear + GELU may round differently
  // (exactness() says where).
  const bool fused = GENERATE(true, false);
  const auto& m = model(name, fused);
  const auto& r = refs(name);
  const auto keys = input_keys(r);
  REQUIRE(keys.size() >= 2);
  const double tol = tolerance(fused);
  // Three graphs (forward, intermediate layers, attention), one MLP per block in each.
  CHECK(m.fused_layers() == (fused && at::hasMKLDNN() ? 3 * m.info().depth : 0));
  const int64_t d = m.info().embed_dim;
  const int64_t regs = m.info().num_register_tokens;
  for (const auto& k : keys) {
    INFO(name << " at " << k << (fused ? ", fused" : ", unfused"));
    const at::Tensor& x = r.at("x_" + k);
    const int64_t b = x.size(0), h = x.size(2) / 14, w = x.size(3) / 14;
    const bool want_prenorm = r.count("prenorm_" + k) > 0;
    const auto f = m.extract_features(x, want_prenorm);

    CHECK(f.cls.sizes() == at::IntArrayRef({b, d}));
    CHECK(f.registers.sizes() == at::IntArrayRef({b, regs, d}));
    CHECK(f.patches.sizes() == at::IntArrayRef({b, h, w, d}));
    CHECK(f.cls.scalar_type() == at::kFloat);
    CHECK(f.patches.is_contiguous());
    REQUIRE(f.grids.size() == static_cast<size_t>(b));
    CHECK(f.grids[0].rows == h);
    CHECK(f.grids[0].cols == w);
    CHECK(f.batch_size() == b);

    const double e_cls = max_abs_diff(f.cls, r.at("cls_" + k));
    const double e_reg = max_abs_diff(f.registers, r.at("registers_" + k));
    const double e_patch = max_abs_diff(f.patches, on_grid(r.at("patches_" + k), f.patches));
    const std::string label = name + " " + k + (fused ? " fused" : "");
    report("max abs error " + label + " cls", e_cls);
    report("max abs error " + label + " patches", e_patch);
    CHECK(e_cls <= tol);
    CHECK(e_reg <= tol);
    CHECK(e_patch <= tol);
    if (want_prenorm) {
      REQUIRE(f.prenorm.defined());
      const double e_pre = max_abs_diff(f.prenorm, r.at("prenorm_" + k));
      report("max abs error " + label + " prenorm", e_pre);
      CHECK(e_pre <= tol);
    } else {
      CHECK_FALSE(f.prenorm.defined());
    }
    if (r.count("eager_cls_" + k)) {
      CHECK(max_abs_diff(f.cls, r.at("eager_cls_" + k)) <= kTol);
    }
  }
}

TEST_CASE("prenorm is only returned when asked for", "[model]") {
  const auto& x = refs("model_s4reg").at("x_224x224_b1");
  CHECK_FALSE(model("model_s4reg").extract_features(x).prenorm.defined());
  const auto f = model("model_s4reg").extract_features(x, true);
  CHECK(f.prenorm.sizes() == at::IntArrayRef({1, 1 + 4 + 256, 384}));
}

TEST_CASE("inputs of any floating dtype are converted to the model's dtype", "[model]") {
  const auto& r = refs("model_s4");
  const auto f = model("model_s4").extract_features(r.at("x_224x224_b1").to(at::kDouble));
  CHECK(max_abs_diff(f.cls, r.at("cls_224x224_b1")) <= kTol);
}

TEST_CASE("intermediate layers equal the blocks' outputs computed in PyTorch", "[model][parity]") {
  const std::string name = GENERATE(as<std::string>{}, "model_s4reg", "model_s4");
  const std::string label = GENERATE(as<std::string>{}, "norm", "raw");
  INFO(name << ", " << label);
  const auto& r = refs(name);
  const auto& x = r.at("x_126x350_b4");
  const at::Tensor idx = r.at("layers_" + label + "_indices");
  std::vector<int64_t> blocks(idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + idx.numel());
  const bool norm = label == "norm";
  const auto lf = model(name).intermediate_layers(x, blocks, norm);
  REQUIRE(lf.size() == blocks.size());
  REQUIRE(lf.grids.size() == 4);
  for (size_t i = 0; i < blocks.size(); ++i) {
    CHECK(lf.indices[i] == (blocks[i] < 0 ? blocks[i] + 4 : blocks[i]));
    CHECK(lf.patches[i].sizes() == at::IntArrayRef({4, 9, 25, 384}));
    CHECK(lf.cls[i].sizes() == at::IntArrayRef({4, 384}));
    const auto ref_p = r.at("layers_" + label + "_patches_" + std::to_string(i));
    const double e_p = max_abs_diff(lf.patches[i], on_grid(ref_p, lf.patches[i]));
    const double e_c =
        max_abs_diff(lf.cls[i], r.at("layers_" + label + "_cls_" + std::to_string(i)));
    report("max abs error " + name + " layers " + label + " block " + std::to_string(blocks[i]),
           std::max(e_p, e_c));
    CHECK(e_p <= kTol);
    CHECK(e_c <= kTol);
  }
}

TEST_CASE("the last normed intermediate layer is the features' output", "[model]") {
  const auto& r = refs("model_s4reg");
  const auto& x = r.at("x_126x350_b4");
  const auto lf = model("model_s4reg").intermediate_layers(x, {-1});
  CHECK(max_abs_diff(lf.cls[0], r.at("cls_126x350_b4")) <= kTol);
}

TEST_CASE("block indices out of range or missing are refused", "[model][errors]") {
  const auto& m = model("model_s4reg");
  const auto x = zeros(1, 3, 28, 28);
  for (int64_t bad : {4, -5}) {
    const auto msg = message_of<dinov2::Error>([&] { m.intermediate_layers(x, {0, bad}); });
    CHECK_THAT(msg, ContainsSubstring("block index " + std::to_string(bad)));
    CHECK_THAT(msg, ContainsSubstring("4 blocks"));
  }
  CHECK_THAT(message_of<dinov2::Error>([&] { m.intermediate_layers(x, std::vector<int64_t>{}); }),
             ContainsSubstring("at least one block"));
}

TEST_CASE("cls_attention equals the attention written out from the weights", "[model][parity]") {
  const std::string name = GENERATE(as<std::string>{}, "model_s4reg", "model_s4");
  INFO(name);
  const auto& r = refs(name);
  const auto attn = model(name).cls_attention(r.at("x_126x350_b4"));
  REQUIRE(attn.sizes() == at::IntArrayRef({4, 6, 9, 25}));
  CHECK(attn.scalar_type() == at::kFloat);
  const double e_jit = max_abs_diff(attn, on_grid(r.at("attention_jit"), attn));
  const double e_manual = max_abs_diff(attn, on_grid(r.at("attention_manual"), attn));
  report("max abs error " + name + " cls_attention", std::max(e_jit, e_manual));
  CHECK(e_jit <= kAttentionTol);
  CHECK(e_manual <= kAttentionTol);
}

TEST_CASE("pooled() is cls next to the mean patch token", "[model][features]") {
  const auto& r = refs("model_s4reg");
  const auto f = model("model_s4reg").extract_features(r.at("x_126x350_b4"));
  const auto pooled = f.pooled();
  CHECK(pooled.sizes() == at::IntArrayRef({4, 768}));
  CHECK(max_abs_diff(pooled, r.at("pooled_126x350_b4")) <= kTol);
}

TEST_CASE("normalized() gives unit-length tokens", "[model][features]") {
  const auto& r = refs("model_s4reg");
  const auto f = model("model_s4reg").extract_features(r.at("x_126x350_b4"), true);
  const auto n = f.normalized();
  CHECK(max_abs_diff(n.cls, r.at("normcls_126x350_b4")) <= kTol);
  CHECK(max_abs_diff(n.patches, on_grid(r.at("normpatches_126x350_b4"), n.patches)) <= kTol);
  CHECK(max_abs_diff(n.registers.norm(2, {-1}), at::ones({4, 4})) <= kTol);
  CHECK(n.prenorm.equal(f.prenorm));  // kept as it is
  CHECK(n.grids.size() == f.grids.size());
}

TEST_CASE("outputs are ordinary tensors that autograd code can use", "[model][features]") {
  const auto& m = model("model_s4reg");
  const auto& x = refs("model_s4reg").at("x_224x224_b1");
  const auto f = m.extract_features(x, true);
  CHECK_FALSE(f.cls.is_inference());
  CHECK_FALSE(f.registers.is_inference());
  CHECK_FALSE(f.patches.is_inference());
  CHECK_FALSE(f.prenorm.is_inference());
  CHECK_FALSE(m.intermediate_layers(x, {1}).patches[0].is_inference());
  CHECK_FALSE(m.cls_attention(x).is_inference());
  // A probe trained on the features: d/dW sum(cls W) has every column equal to cls.
  const auto weight = at::zeros({384, 3}).requires_grad_();
  at::matmul(f.pooled().narrow(1, 0, 384), weight).sum().backward();
  REQUIRE(weight.grad().defined());
  CHECK(max_abs_diff(weight.grad().select(1, 2), f.cls[0]) == 0.0);
}

TEST_CASE("a Batch keeps its grids and they must match the pixels", "[model]") {
  const auto& m = model("model_s4reg");
  dinov2::Batch batch;
  batch.pixels = refs("model_s4reg").at("x_126x350_b1");
  auto grid = dinov2::PatchGrid::for_input(126, 350);
  grid.original_height = 500;
  grid.original_width = 1400;
  grid.crop_height = 500;
  grid.crop_width = 1400;
  batch.grids = {grid};
  const auto f = m.extract_features(batch);
  REQUIRE(f.grids.size() == 1);
  CHECK(f.grids[0].original_width == 1400);
  CHECK(m.intermediate_layers(batch, {1}).grids[0].original_height == 500);

  batch.grids[0].rows = 10;
  CHECK_THAT(message_of<dinov2::InputError>([&] { m.extract_features(batch); }),
             ContainsSubstring("grid 0 is 10x25"));
  batch.grids = {grid, grid};
  CHECK_THAT(message_of<dinov2::InputError>([&] { m.extract_features(batch); }),
             ContainsSubstring("1 images but 2 grids"));
}

TEST_CASE("Eigen views share the features' memory", "[model][eigen]") {
  const auto& r = refs("model_s4reg");
  const auto f = model("model_s4reg").extract_features(r.at("x_126x350_b4"));
  const auto cls = dinov2::cls_matrix(f);
  CHECK(cls.rows() == 4);
  CHECK(cls.cols() == 384);
  CHECK(cls.data() == f.cls.data_ptr<float>());
  CHECK(cls(2, 17) == f.cls[2][17].item<float>());

  const auto p = dinov2::patch_matrix(f, 1);
  CHECK(p.rows() == 9 * 25);
  CHECK(p.cols() == 384);
  // Row i*w + j is grid row i, column j.
  CHECK(p(3 * 25 + 7, 100) == f.patches[1][3][7][100].item<float>());
  CHECK(p(8 * 25 + 24, 383) == f.patches[1][8][24][383].item<float>());

  const auto regs = dinov2::register_matrix(f, 3);
  CHECK(regs.rows() == 4);
  CHECK(regs(1, 5) == f.registers[3][1][5].item<float>());

  const auto pooled = f.pooled();
  CHECK(dinov2::as_matrix(pooled).cols() == 768);
}

TEST_CASE("Eigen views refuse tensors they cannot map", "[model][eigen][errors]") {
  const auto& r = refs("model_s4reg");
  const auto f = model("model_s4reg").extract_features(r.at("x_224x224_b1"));
  CHECK_THAT(message_of<dinov2::Error>([&] { dinov2::patch_matrix(f, 1); }),
             ContainsSubstring("image index 1 is out of range for a batch of 1"));
  const at::Tensor half = f.cls.to(at::kBFloat16);
  CHECK_THAT(message_of<dinov2::InputError>([&] { dinov2::as_matrix(half); }),
             ContainsSubstring("BFloat16"));
  const at::Tensor strided = f.patches[0].transpose(0, 1);
  CHECK_THAT(message_of<dinov2::InputError>([&] { dinov2::as_matrix(strided); }),
             ContainsSubstring("not contiguous"));
}

TEST_CASE("Model::load explains every unusable file", "[model][errors]") {
  struct Case {
    std::string file;
    std::vector<std::string> says;
  };
  const std::vector<Case> cases = {
      {"model_missing.pt", {"model_missing.pt", "does not exist"}},
      {"model_not_archive.txt", {"model_not_archive.txt", "not a TorchScript archive"}},
      // torch.save of a dict: read as weights (an official checkpoint), strictly.
      {"model_state_dict.pt", {"model_state_dict.pt", "missing key 'pos_embed'"}},
      {"model_nometa.pt", {"not a DINOv2 export", "dinov2/metadata.json"}},
      {"model_v99.pt", {"format version 99", "9.0.0", "up to 1", "upgrade the dinov2 library"}},
      {"model_wrong_format.pt", {"'dinov2-checkpoint'", "not a 'dinov2-backbone'"}},
      {"model_bad_json.pt", {"not valid JSON", "re-export"}},
      {"model_missing_field.pt", {"'embed_dim' is missing"}},
      {"model_no_methods.pt", {"no 'intermediate_layers' method"}},
      {"model_wrong_patch.pt", {"patch_size 16", "disagree with the graph's patch embedding"}},
      // TorchScript reports a syntax error as std::runtime_error, not c10::Error.
      {"model_bad_code.pt",
       {"not a readable TorchScript archive", "expected ident", "exported again"}},
      // A string claiming 3.4 GB in a 2 KB pickle: refused before LibTorch allocates it.
      {"model_pickle_bomb.pt",
       {"is damaged", "the pickle", "data.pkl", "claims 3439329281 bytes", "dinov2-export"}},
  };
  for (const auto& c : cases) {
    INFO(c.file);
    const auto msg =
        message_of<dinov2::ModelFileError>([&] { dinov2::Model::load(data_path(c.file)); });
    CHECK(msg.rfind("dinov2: ", 0) == 0);
    for (const auto& s : c.says) CHECK_THAT(msg, ContainsSubstring(s));
  }
  // A folder is read as a Hugging Face model folder.
  CHECK_THAT(message_of<dinov2::ModelFileError>([] { dinov2::Model::load(data_path("")); }),
             ContainsSubstring("no model.safetensors or pytorch_model.bin in the folder"));
  try {
    dinov2::Model::load(data_path("model_v99.pt"));
  } catch (const dinov2::Error& e) {
    CHECK(e.code() == dinov2::ErrorCode::kModelFile);
  }
}

TEST_CASE("bad Options are refused at load", "[model][errors]") {
  const auto path = data_path("model_s4reg.pt");
  CHECK_THAT(message_of<dinov2::Error>(
                 [&] { dinov2::Model::load(path, dinov2::Options{}.with_max_tokens(0)); }),
             ContainsSubstring("max_tokens is 0"));
  CHECK_THAT(message_of<dinov2::Error>(
                 [&] { dinov2::Model::load(path, dinov2::Options{}.with_threads(-1)); }),
             ContainsSubstring("threads is -1"));
  CHECK_THAT(message_of<dinov2::Error>(
                 [&] { dinov2::Model::load(path, dinov2::Options{}.with_profiled_runs(-2)); }),
             ContainsSubstring("profiled_runs is -2"));
  CHECK_THAT(message_of<dinov2::Error>([&] {
               dinov2::Model::load(path,
                                   dinov2::Options{}.with_kernels(static_cast<dinov2::Kernels>(7)));
             }),
             ContainsSubstring("Options::kernels is 7"));
}

TEST_CASE("CUDA on a machine without it is a DeviceError", "[model][errors][device]") {
  const auto path = data_path("model_s4reg.pt");
  if (torch::cuda::is_available()) {
    // With a GPU present, an absent device index is the error to check.
    const auto opts = dinov2::Options{}.with_device(dinov2::Device::kCUDA, 99);
    CHECK_THAT(message_of<dinov2::DeviceError>([&] { dinov2::Model::load(path, opts); }),
               ContainsSubstring("device_index is 99"));
    DINOV2_SKIP("CUDA is available: the no-CUDA error cannot be produced here");
  }
  const auto opts = dinov2::Options{}.with_device(dinov2::Device::kCUDA);
  const auto msg = message_of<dinov2::DeviceError>([&] { dinov2::Model::load(path, opts); });
  CHECK_THAT(msg, ContainsSubstring("no CUDA device"));
  CHECK_THAT(msg, ContainsSubstring("Device::kCPU"));
}

TEST_CASE("inputs the model cannot take are refused with the reason and the fix",
          "[model][errors]") {
  const auto& m = model("model_s4reg");
  auto input_error = [&](const at::Tensor& x) {
    return message_of<dinov2::InputError>([&] { m.extract_features(x); });
  };
  {
    const auto msg = input_error(zeros(1, 3, 225, 224));
    CHECK_THAT(msg, ContainsSubstring("225x224"));
    CHECK_THAT(msg, ContainsSubstring("patch size 14"));
    CHECK_THAT(msg, ContainsSubstring("e.g. 224x224"));
  }
  CHECK_THAT(input_error(zeros(1, 3, 10, 30)), ContainsSubstring("e.g. 14x28"));
  CHECK_THAT(input_error(zeros(1, 4, 224, 224)), ContainsSubstring("3 channels"));
  CHECK_THAT(input_error(zeros(1, 1, 224, 224)), ContainsSubstring("got 1"));
  CHECK_THAT(input_error(at::zeros({3, 224, 224})), ContainsSubstring("3 dimensions"));
  CHECK_THAT(input_error(zeros(0, 3, 224, 224)), ContainsSubstring("batch is empty"));
  CHECK_THAT(input_error(at::zeros({1, 3, 224, 224}, at::kByte)), ContainsSubstring("Byte"));
  CHECK_THAT(input_error(at::Tensor()), ContainsSubstring("undefined"));
  // The same checks guard the other entry points.
  CHECK_THROWS_AS(m.cls_attention(zeros(1, 3, 225, 224)), dinov2::InputError);
  CHECK_THROWS_AS(m.intermediate_layers(zeros(1, 2, 224, 224), {0}), dinov2::InputError);
}

TEST_CASE("inputs over the token cap are refused before any work", "[model][errors]") {
  {
    // Default cap 16,384: a 1806 x 1806 input has 129 * 129 = 16,641 patches.
    const auto msg = message_of<dinov2::InputError>(
        [&] { model("model_s4reg").extract_features(zeros(1, 3, 1806, 1806)); });
    CHECK_THAT(msg, ContainsSubstring("image is 1806x1806, which needs 16,641 tokens; the limit is "
                                      "16,384 (Options::max_tokens)"));
  }
  const auto small =
      dinov2::Model::load(data_path("model_s4reg.pt"), dinov2::Options{}.with_max_tokens(100));
  CHECK(small.options().max_tokens == 100);
  try {
    small.cls_attention(zeros(2, 3, 224, 224));
    FAIL("no exception for 256 tokens over a cap of 100");
  } catch (const dinov2::InputError& e) {
    CHECK(e.code() == dinov2::ErrorCode::kTooManyTokens);
    CHECK_THAT(std::string(e.what()), ContainsSubstring("needs 256 tokens; the limit is 100"));
  }
  CHECK(small.extract_features(zeros(1, 3, 140, 140)).patches.size(1) == 10);  // 100: allowed
}

TEST_CASE("extract_features from four threads equals sequential calls", "[model][threads]") {
  const auto& m = model("model_s4reg");
  const auto& r = refs("model_s4reg");
  const std::vector<std::string> keys = {"224x224_b1", "126x350_b4", "224x224_b4", "126x350_b1"};
  std::vector<dinov2::Features> sequential;
  for (const auto& k : keys) sequential.push_back(m.extract_features(r.at("x_" + k)));

  constexpr int kRounds = 3;
  std::vector<std::vector<dinov2::Features>> parallel(keys.size());
  std::vector<std::string> errors(keys.size());
  std::vector<std::thread> threads;
  for (size_t t = 0; t < keys.size(); ++t) {
    threads.emplace_back([&, t] {
      try {
        for (int i = 0; i < kRounds; ++i) {
          parallel[t].push_back(m.extract_features(r.at("x_" + keys[t])));
        }
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (size_t t = 0; t < keys.size(); ++t) {
    INFO("thread " << t << " on " << keys[t]);
    CHECK(errors[t].empty());
    REQUIRE(parallel[t].size() == kRounds);
    for (const auto& f : parallel[t]) {
      CHECK(f.cls.equal(sequential[t].cls));
      CHECK(f.patches.equal(sequential[t].patches));
      CHECK(f.registers.equal(sequential[t].registers));
    }
  }
}

TEST_CASE("a reduced-precision model stays close to float32", "[model][dtype]") {
  const auto dtype = GENERATE(dinov2::DType::kBFloat16, dinov2::DType::kFloat16);
  INFO(dinov2::to_string(dtype));
  const auto& r = refs("model_s4reg");
  const auto m =
      dinov2::Model::load(data_path("model_s4reg.pt"), dinov2::Options{}.with_dtype(dtype));
  CHECK(m.options().dtype == dtype);
  const auto f = m.extract_features(r.at("x_224x224_b4"));
  CHECK(f.cls.scalar_type() == at::kFloat);  // outputs are widened to float32
  CHECK(f.patches.scalar_type() == at::kFloat);
  const auto cosine = at::cosine_similarity(f.cls, r.at("cls_224x224_b4"), 1);
  const double worst = cosine.min().item<double>();
  report(std::string("min cosine ") + dinov2::to_string(dtype) + " vs float32 cls", worst);
  CHECK(worst >= 0.99);
}

TEST_CASE("DType::kAuto picks bfloat16 only where the CPU computes it natively", "[model][dtype]") {
  const dinov2::CpuInfo cpu = dinov2::cpu_info();
  INFO(dinov2::to_string(cpu));
  const auto& r = refs("model_s4reg");
  const auto m = dinov2::Model::load(data_path("model_s4reg.pt"),
                                     dinov2::Options{}.with_dtype(dinov2::DType::kAuto));
  CHECK(m.options().dtype == dinov2::DType::kAuto);
  CHECK(m.dtype() == (cpu.native_bfloat16 ? dinov2::DType::kBFloat16 : dinov2::DType::kFloat32));
  CHECK_THAT(m.dtype_reason(), ContainsSubstring(std::string("auto: ") + to_string(m.dtype())));
  CHECK_THAT(m.dtype_reason(), ContainsSubstring(cpu.onednn_isa));
  const auto f = m.extract_features(r.at("x_126x350_b4"));
  const double worst = at::cosine_similarity(f.cls, r.at("cls_126x350_b4"), 1).min().item<double>();
  report("min cosine auto vs float32 cls", worst);
  CHECK(worst >= 0.999);
  // Explicit dtypes are taken as asked, whatever the CPU.
  const auto bf16 = dinov2::Model::load(data_path("model_s4reg.pt"),
                                        dinov2::Options{}.with_dtype(dinov2::DType::kBFloat16));
  CHECK(bf16.dtype() == dinov2::DType::kBFloat16);
  CHECK(bf16.dtype_reason() == "bfloat16 (asked for)");
}

TEST_CASE("bfloat16 on any CPU gives features within cosine 0.999 of float32", "[model][dtype]") {
  const auto& r = refs("model_s12");
  const bool fused = GENERATE(true, false);
  const auto m = dinov2::Model::load(
      data_path("model_s12.pt"),
      dinov2::Options{}.with_dtype(dinov2::DType::kBFloat16).with_fused_kernels(fused));
  INFO(dinov2::to_string(dinov2::cpu_info()) << "; fusion: " << m.fusion_reason());
  for (const char* k : {"224x224_b1", "126x350_b1"}) {
    const auto f = m.extract_features(r.at(std::string("x_") + k));
    const double cosine =
        at::cosine_similarity(f.cls, r.at(std::string("cls_") + k), 1).min().item<double>();
    report(std::string("cosine bfloat16 vs float32 cls, 12 blocks, ") + k, cosine);
    CHECK(cosine >= 0.999);
  }
}

TEST_CASE("cpu_info reports the ISA ATen dispatches to and the oneDNN limit in force",
          "[model][runtime]") {
  const dinov2::CpuInfo cpu = dinov2::cpu_info();
  // Printed so that a CI log shows what an ISA-limited run actually ran under.
  WARN("cpu_info: " << dinov2::to_string(cpu));
  CHECK(cpu.aten_capability == at::get_cpu_capability());
  CHECK_FALSE(cpu.model.empty());
  CHECK(cpu.threads == at::get_num_threads());
  CHECK(cpu.native_bfloat16 ==
        ((cpu.avx512_bf16 || cpu.amx) && (cpu.onednn_isa == "AVX512_CORE_BF16" ||
                                          cpu.onednn_isa.rfind("AVX512_CORE_FP16", 0) == 0 ||
                                          cpu.onednn_isa.rfind("AVX512_CORE_AMX", 0) == 0)));
  const char* limit = std::getenv("ONEDNN_MAX_CPU_ISA");
  if (limit != nullptr && std::string(limit) == "AVX2") {
    CHECK(cpu.onednn_limit == "AVX2");
    CHECK((cpu.onednn_isa == "AVX2" || cpu.onednn_isa == "AVX" || cpu.onednn_isa == "SSE41"));
    CHECK_FALSE(cpu.native_bfloat16);
    CHECK_FALSE(onednn_has_bfloat16());  // LibTorch's oneDNN honours the same limit
  }
  if (cpu.avx2 && !cpu.avx512) CHECK(cpu.onednn_isa.rfind("AVX512", 0) != 0);
  const std::string line = dinov2::to_string(cpu);
  CHECK_THAT(line, ContainsSubstring("ATen " + cpu.aten_capability));
  CHECK_THAT(line, ContainsSubstring("oneDNN " + cpu.onednn_isa));
  CHECK_THAT(dinov2::to_json(cpu), ContainsSubstring("\"native_bfloat16\""));
}

TEST_CASE("float16 overflow is reported instead of returning NaN", "[model][dtype][errors]") {
  const auto path = data_path("model_fp16_overflow.pt");
  const auto x = zeros(1, 3, 28, 28);
  // The file's activations exceed 65504 on purpose: fine in float32 ...
  const auto f32 = dinov2::Model::load(path).extract_features(x);
  CHECK(at::isfinite(f32.cls).all().item<bool>());
  // ... and not representable in float16.
  const auto f16 = dinov2::Model::load(path, dinov2::Options{}.with_dtype(dinov2::DType::kFloat16));
  const auto msg = message_of<dinov2::Error>([&] { f16.extract_features(x); });
  CHECK_THAT(msg, ContainsSubstring("NaN or Inf in float16"));
  CHECK_THAT(msg, ContainsSubstring("DType::kBFloat16"));
}

TEST_CASE("Options::threads sets LibTorch's process-wide intra-op thread count", "[model]") {
  const int before = at::get_num_threads();
  const auto m =
      dinov2::Model::load(data_path("model_s4reg.pt"), dinov2::Options{}.with_threads(1));
  CHECK(at::get_num_threads() == 1);
  at::set_num_threads(before);
}

TEST_CASE("fused kernels apply to float32 and bfloat16 on the CPU, not to float16",
          "[model][dtype]") {
  const auto& r = refs("model_s4reg");
  const auto& x = r.at("x_126x350_b4");
  const auto load = [](dinov2::DType dtype, bool fused) {
    return dinov2::Model::load(data_path("model_s4reg.pt"),
                               dinov2::Options{}.with_dtype(dtype).with_fused_kernels(fused));
  };
  if (!at::hasMKLDNN()) DINOV2_SKIP("this LibTorch has no oneDNN, so nothing is fused");
  const auto half = load(dinov2::DType::kFloat16, true);
  CHECK(half.fused_layers() == 0);
  CHECK_THAT(half.fusion_reason(), ContainsSubstring("float16"));
  const auto fused = load(dinov2::DType::kBFloat16, true);
  const auto plain = load(dinov2::DType::kBFloat16, false);
  // oneDNN builds bfloat16 kernels only where the CPU has AVX-512 (and ONEDNN_MAX_CPU_ISA allows
  // it); elsewhere the model must run unfused, and say so, rather than fail.
  if (onednn_has_bfloat16()) {
    CHECK(fused.fused_layers() == 3 * 4);
    CHECK_THAT(fused.fusion_reason(), ContainsSubstring("12 linear + GELU pairs fused"));
  } else {
    WARN("oneDNN has no bfloat16 kernels on this CPU (" << dinov2::to_string(dinov2::cpu_info())
                                                        << "): checking the unfused fallback");
    CHECK(fused.fused_layers() == 0);
    CHECK_THAT(fused.fusion_reason(), ContainsSubstring("no bfloat16 kernels on this CPU"));
  }
  CHECK(plain.fused_layers() == 0);
  CHECK_THAT(plain.fusion_reason(), ContainsSubstring("Options::fused_kernels is false"));
  // bfloat16 rounds once more or less inside the fused call; the features must not notice.
  const auto a = fused.extract_features(x);
  const auto b = plain.extract_features(x);
  const double worst = at::cosine_similarity(a.cls, b.cls, 1).min().item<double>();
  report("min cosine bfloat16 fused vs unfused cls", worst);
  CHECK(worst >= 0.999);
  CHECK(at::cosine_similarity(a.cls, r.at("cls_126x350_b4"), 1).min().item<double>() >= 0.99);
}

TEST_CASE("every kernel plan gives the references' features and says what it ran",
          "[model][parity]") {
  if (!at::hasMKLDNN()) DINOV2_SKIP("this LibTorch has no oneDNN, so every plan is the export");
  using dinov2::Kernels;
  const auto& r = refs("model_s4reg");
  const auto& x = r.at("x_126x350_b4");
  const Kernels plan =
      GENERATE(Kernels::kAuto, Kernels::kOneDNN, Kernels::kFusedGelu, Kernels::kExported);
  INFO("Kernels " << dinov2::to_string(plan));
  const auto m =
      dinov2::Model::load(data_path("model_s4reg.pt"), dinov2::Options{}.with_kernels(plan));
  const std::string isa = dinov2::cpu_info().onednn_isa;
  const bool avx2_or_better = isa.rfind("AVX512", 0) == 0 || isa.rfind("AVX2", 0) == 0;
  const Kernels taken = plan != Kernels::kAuto ? plan
                        : avx2_or_better       ? Kernels::kOneDNN
                                               : Kernels::kFusedGelu;
  // 4 blocks in each of the three methods; 4 linear layers a block, one weight each.
  if (taken == Kernels::kExported) {
    CHECK(m.fused_layers() == 0);
    CHECK_THAT(m.fusion_reason(), ContainsSubstring("Kernels::kExported"));
  } else {
    CHECK(m.fused_layers() == 3 * 4);
    if (taken == Kernels::kOneDNN) {
      CHECK_THAT(m.fusion_reason(), ContainsSubstring("other linear layers on oneDNN"));
      CHECK_THAT(m.fusion_reason(), ContainsSubstring("16 weights prepacked"));
    } else {
      CHECK_THAT(m.fusion_reason(), !ContainsSubstring("other linear layers"));
    }
    if (plan == Kernels::kAuto) CHECK_THAT(m.fusion_reason(), ContainsSubstring("Kernels::kAuto"));
  }
  const double tol = tolerance(taken != Kernels::kExported);
  const auto f = m.extract_features(x, /*with_prenorm=*/true);
  const double e_cls = max_abs_diff(f.cls, r.at("cls_126x350_b4"));
  const double e_patch = max_abs_diff(f.patches, on_grid(r.at("patches_126x350_b4"), f.patches));
  report(std::string("max abs error kernels ") + dinov2::to_string(plan) + " cls", e_cls);
  report(std::string("max abs error kernels ") + dinov2::to_string(plan) + " patches", e_patch);
  CHECK(e_cls <= tol);
  CHECK(e_patch <= tol);
  CHECK(max_abs_diff(f.registers, r.at("registers_126x350_b4")) <= tol);
  // The other methods read the same (possibly prepacked) weights.
  const auto layers = m.intermediate_layers(x, {-1});
  REQUIRE(layers.size() == 1);
  CHECK(max_abs_diff(layers.cls[0], r.at("cls_126x350_b4")) <= tol);
  const auto exported = dinov2::Model::load(data_path("model_s4reg.pt"),
                                            dinov2::Options{}.with_kernels(Kernels::kExported));
  CHECK(max_abs_diff(m.cls_attention(x), exported.cls_attention(x)) <= kTol);
}

// Run alone, in a process of its own, by the next case: its first Model::load.
TEST_CASE("runtime defaults at the first load (child process)", "[.runtime_first_load]") {
  auto& runs = torch::jit::getNumProfiledRuns();
  runs = 5;
  const auto m = dinov2::Model::load(data_path("model_s4.pt"));
  CHECK(runs == 0);  // RuntimeSettings::profiled_runs' default
  const auto& r = refs("model_s4");
  CHECK(max_abs_diff(m.extract_features(r.at("x_224x224_b1")).cls, r.at("cls_224x224_b1")) <=
        tolerance(true));
}

TEST_CASE("the first Model::load of a process applies the runtime defaults: no profiling run",
          "[model]") {
  // A fresh process, whatever this one has loaded or configured already.
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const int status = std::system(("'" + self + "' '[.runtime_first_load]' > /dev/null").c_str());
  CHECK(status == 0);
}

TEST_CASE("configure_runtime sets the process-wide settings; later loads leave them", "[model]") {
  auto& runs = torch::jit::getNumProfiledRuns();
  const size_t runs_before = runs;
  const int threads_before = at::get_num_threads();
  dinov2::configure_runtime(dinov2::RuntimeSettings{}.with_threads(1).with_profiled_runs(2));
  CHECK(at::get_num_threads() == 1);
  CHECK(runs == 2);
  CHECK(dinov2::runtime_settings().threads == 1);
  CHECK(dinov2::runtime_settings().profiled_runs == 2);
  dinov2::Model::load(data_path("model_s4.pt"));  // Options{} touches neither
  CHECK(at::get_num_threads() == 1);
  CHECK(runs == 2);
  // The deprecated Options fields still apply, process-wide, when set.
  dinov2::Model::load(data_path("model_s4.pt"), dinov2::Options{}.with_profiled_runs(3));
  CHECK(runs == 3);
  dinov2::Model::load(data_path("model_s4.pt"), dinov2::Options{}.with_profiled_runs(-1));
  CHECK(runs == 3);  // -1 leaves it
  // Bad values are refused before anything changes.
  CHECK(dinov2::test::message_of<dinov2::InputError>([] {
          dinov2::configure_runtime(dinov2::RuntimeSettings{}.with_threads(-1));
        }).find("RuntimeSettings::threads is -1") != std::string::npos);
  CHECK(dinov2::test::message_of<dinov2::InputError>([] {
          dinov2::configure_runtime(dinov2::RuntimeSettings{}.with_profiled_runs(-2));
        }).find("RuntimeSettings::profiled_runs is -2") != std::string::npos);
  CHECK(runs == 3);
  runs = runs_before;
  at::set_num_threads(threads_before);
}

TEST_CASE("an AOTInductor package gives the TorchScript file's features", "[model][aot][parity]") {
  const std::string name = GENERATE(as<std::string>{}, "aot_s2reg", "aot_s2");
  const auto& r = refs(name);
  const auto package = dinov2::Model::load(data_path(name + ".pt2"));
  CHECK(package.info().backend == dinov2::Backend::kAOTInductor);
  CHECK_FALSE(package.info().any_input_size());
  CHECK_FALSE(package.info().all_methods());
  CHECK(package.info().max_batch == 3);
  CHECK(package.info().depth == 2);
  CHECK(model(name).info().backend == dinov2::Backend::kTorchScript);
  CHECK(model(name).info().all_methods());
  for (const auto& k : input_keys(r)) {
    INFO(name << " at " << k);
    const at::Tensor& x = r.at("x_" + k);
    CHECK(package.info().compiled_size == std::array<int64_t, 2>{x.size(2), x.size(3)});
    // Batch 4 is over max_batch (3): the library splits it and joins the outputs.
    const auto f = package.extract_features(x, /*with_prenorm=*/true);
    CHECK(f.patches.sizes() == at::IntArrayRef({x.size(0), x.size(2) / 14, x.size(3) / 14, 384}));
    const double e_cls = max_abs_diff(f.cls, r.at("cls_" + k));
    const double e_patch = max_abs_diff(f.patches, on_grid(r.at("patches_" + k), f.patches));
    report("max abs error AOTInductor " + name + " " + k + " cls", e_cls);
    report("max abs error AOTInductor " + name + " " + k + " patches", e_patch);
    CHECK(e_cls <= kTol);
    CHECK(e_patch <= kTol);
    CHECK(max_abs_diff(f.registers, r.at("registers_" + k)) <= kTol);
    CHECK(max_abs_diff(f.prenorm, r.at("prenorm_" + k)) <= kTol);
  }
}

TEST_CASE("an AOTInductor package refuses what it was not compiled for", "[model][aot][errors]") {
  const auto path = data_path("aot_s2reg.pt2");
  const auto package = dinov2::Model::load(path);
  const auto other_size =
      message_of<dinov2::InputError>([&] { package.extract_features(zeros(1, 3, 70, 56)); });
  CHECK_THAT(other_size, ContainsSubstring("compiled for 56x70 (HxW) inputs, got 70x56"));
  CHECK_THAT(message_of<dinov2::InputError>([&] { package.extract_features(zeros(1, 3, 50, 70)); }),
             ContainsSubstring("not a positive multiple of the patch size"));
  CHECK_THAT(
      message_of<dinov2::Error>([&] { package.intermediate_layers(zeros(1, 3, 56, 70), {-1}); }),
      ContainsSubstring("intermediate_layers is not compiled into AOTInductor packages"));
  CHECK_THAT(message_of<dinov2::Error>([&] { package.cls_attention(zeros(1, 3, 56, 70)); }),
             ContainsSubstring("cls_attention is not compiled into AOTInductor packages"));
  // A Pipeline that would run intermediate layers on it is refused when it is made.
  const auto pipeline_msg = message_of<dinov2::InputError>([&] {
    dinov2::Pipeline(package, dinov2::Recipe::resize(56, 70),
                     dinov2::PipelineOptions{}.with_layers(dinov2::LayerRequest{{-1}, true}));
  });
  CHECK_THAT(pipeline_msg, ContainsSubstring("AOTInductor package"));
  CHECK_THAT(message_of<dinov2::DeviceError>([&] {
               dinov2::Model::load(path, dinov2::Options{}.with_dtype(dinov2::DType::kBFloat16));
             }),
             ContainsSubstring("compiled for float32, but Options::dtype is bfloat16"));
  // A TorchScript file renamed to .pt2 is not a package.
  const auto fake = std::filesystem::temp_directory_path() / "dinov2_test_fake.pt2";
  std::filesystem::copy_file(data_path("aot_s2reg.pt"), fake,
                             std::filesystem::copy_options::overwrite_existing);
  CHECK_THAT(message_of<dinov2::ModelFileError>([&] { dinov2::Model::load(fake.string()); }),
             ContainsSubstring("is not a readable AOTInductor package"));
  std::filesystem::remove(fake);
}

/// The ONNX exports of tests/refgen/onnx_refs.py: skipped in builds without OpenVINO, required
/// in builds with it.
bool openvino_ready() {
  if (dinov2::backend_available(dinov2::Backend::kOpenVINO)) {
    REQUIRE(std::filesystem::exists(data_path("onnx_s2.onnx")));
    return true;
  }
  return false;
}

TEST_CASE("an ONNX export on OpenVINO gives the TorchScript file's features",
          "[model][openvino][parity]") {
  if (!openvino_ready()) DINOV2_SKIP("this build has no OpenVINO backend (DINOV2_WITH_OPENVINO)");
  const std::string name = GENERATE(as<std::string>{}, "onnx_s2reg", "onnx_s2", "onnx_s2_external");
  const std::string ref_name = name == "onnx_s2_external" ? "onnx_s2" : name;
  const auto& r = refs(ref_name);
  const auto m = dinov2::Model::load(data_path(name + ".onnx"), dinov2::Options{}.with_threads(2));
  CHECK(m.info().backend == dinov2::Backend::kOpenVINO);
  CHECK(m.info().any_input_size());
  CHECK_FALSE(m.info().all_methods());
  CHECK(m.info().depth == 2);
  CHECK(m.info().variant == model(ref_name).info().variant);
  CHECK(m.dtype() == dinov2::DType::kFloat32);
  CHECK_THAT(m.fusion_reason(), ContainsSubstring("OpenVINO"));
  for (const auto& k : input_keys(r)) {
    INFO(name << " at " << k);
    const at::Tensor& x = r.at("x_" + k);
    const auto f = m.extract_features(x, /*with_prenorm=*/true);
    CHECK(f.patches.sizes() == at::IntArrayRef({x.size(0), x.size(2) / 14, x.size(3) / 14, 384}));
    const double e_cls = max_abs_diff(f.cls, r.at("cls_" + k));
    const double e_patch = max_abs_diff(f.patches, on_grid(r.at("patches_" + k), f.patches));
    const double e_prenorm = max_abs_diff(f.prenorm, r.at("prenorm_" + k));
    report("max abs error OpenVINO " + name + " " + k + " cls", e_cls);
    report("max abs error OpenVINO " + name + " " + k + " patches", e_patch);
    report("max abs error OpenVINO " + name + " " + k + " prenorm", e_prenorm);
    CHECK(e_cls <= kTol);
    CHECK(e_patch <= kTol);
    CHECK(e_prenorm <= kTol);
    CHECK(f.registers.sizes() == r.at("registers_" + k).sizes());
    CHECK(max_abs_diff(f.registers, r.at("registers_" + k)) <= kTol);
    // The TorchScript file through the library: the same features within the same tolerance.
    CHECK(max_abs_diff(model(ref_name).extract_features(x).cls, f.cls) <= kTol);
  }
  // Calls from several threads at once give what one call gives.
  const at::Tensor& x = r.at("x_126x350_b3");
  const at::Tensor alone = m.extract_features(x).patches;
  std::vector<at::Tensor> got(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < got.size(); ++i) {
    threads.emplace_back([&, i] { got[i] = m.extract_features(x).patches; });
  }
  for (auto& t : threads) t.join();
  for (const auto& g : got) CHECK(at::equal(g, alone));
}

TEST_CASE("an ONNX export refuses what OpenVINO does not run", "[model][openvino][errors]") {
  if (!dinov2::backend_available(dinov2::Backend::kOpenVINO)) {
    // Without the backend the file is refused, and says how to get it.
    const auto fake = std::filesystem::temp_directory_path() / "dinov2_test_nobackend.onnx";
    std::ofstream(fake) << "not a graph";
    CHECK_THAT(message_of<dinov2::ModelFileError>([&] { dinov2::Model::load(fake.string()); }),
               ContainsSubstring("-DDINOV2_WITH_OPENVINO=ON"));
    std::filesystem::remove(fake);
    DINOV2_SKIP("this build has no OpenVINO backend (DINOV2_WITH_OPENVINO)");
  }
  REQUIRE(openvino_ready());
  const auto path = data_path("onnx_s2reg.onnx");
  const auto m = dinov2::Model::load(path);
  CHECK_THAT(message_of<dinov2::InputError>([&] { m.extract_features(zeros(1, 3, 50, 70)); }),
             ContainsSubstring("not a positive multiple of the patch size"));
  CHECK_THAT(message_of<dinov2::Error>([&] { m.intermediate_layers(zeros(1, 3, 56, 70), {-1}); }),
             ContainsSubstring("intermediate_layers is not in ONNX exports"));
  CHECK_THAT(message_of<dinov2::Error>([&] { m.cls_attention(zeros(1, 3, 56, 70)); }),
             ContainsSubstring("cls_attention is not in ONNX exports"));
  CHECK_THAT(message_of<dinov2::InputError>([&] {
               dinov2::Pipeline(
                   m, dinov2::Recipe::resize(56, 70),
                   dinov2::PipelineOptions{}.with_layers(dinov2::LayerRequest{{-1}, true}));
             }),
             ContainsSubstring("an ONNX export (OpenVINO)"));
  CHECK_THAT(message_of<dinov2::DeviceError>([&] {
               dinov2::Model::load(path, dinov2::Options{}.with_dtype(dinov2::DType::kBFloat16));
             }),
             ContainsSubstring("runs in float32; Options::dtype is bfloat16"));
  // Without a GPU the device check refuses first; with one, the backend does.
  CHECK_THROWS_AS(dinov2::Model::load(path, dinov2::Options{}.with_device(dinov2::Device::kCUDA)),
                  dinov2::DeviceError);
  const auto dir = std::filesystem::temp_directory_path();
  // Not a graph; a truncated graph; a TorchScript file renamed to .onnx.
  const auto garbage = dir / "dinov2_test_garbage.onnx";
  std::ofstream(garbage) << "not a graph";
  CHECK_THAT(message_of<dinov2::ModelFileError>([&] { dinov2::Model::load(garbage.string()); }),
             ContainsSubstring("is not a readable ONNX graph"));
  const auto truncated = dir / "dinov2_test_truncated.onnx";
  std::filesystem::copy_file(path, truncated, std::filesystem::copy_options::overwrite_existing);
  std::filesystem::resize_file(truncated, std::filesystem::file_size(truncated) / 2);
  CHECK_THROWS_AS(dinov2::Model::load(truncated.string()), dinov2::ModelFileError);
  const auto renamed = dir / "dinov2_test_renamed.onnx";
  std::filesystem::copy_file(data_path("onnx_s2reg.pt"), renamed,
                             std::filesystem::copy_options::overwrite_existing);
  CHECK_THROWS_AS(dinov2::Model::load(renamed.string()), dinov2::ModelFileError);
  // Weights kept outside the graph must be there.
  const auto lonely = dir / "dinov2_test_external.onnx";
  std::filesystem::copy_file(data_path("onnx_s2_external.onnx"), lonely,
                             std::filesystem::copy_options::overwrite_existing);
  CHECK_THROWS_AS(dinov2::Model::load(lonely.string()), dinov2::ModelFileError);
  for (const auto& f : {garbage, truncated, renamed, lonely}) std::filesystem::remove(f);
}

TEST_CASE("a moved Model keeps working", "[model]") {
  auto a = dinov2::Model::load(data_path("model_s4.pt"));
  dinov2::Model b = std::move(a);
  const auto& r = refs("model_s4");
  CHECK(max_abs_diff(b.extract_features(r.at("x_224x224_b1")).cls, r.at("cls_224x224_b1")) <= kTol);
  CHECK(b.info().variant == "dinov2_vits14");
}

TEST_CASE("features on CUDA match the CPU references", "[model][cuda]") {
  if (!torch::cuda::is_available()) {
    DINOV2_SKIP("no CUDA device visible to LibTorch (CPU-only build or no GPU)");
  }
  const auto& r = refs("model_s4reg");
  const auto m = dinov2::Model::load(data_path("model_s4reg.pt"),
                                     dinov2::Options{}.with_device(dinov2::Device::kCUDA));
  const auto f = m.extract_features(r.at("x_126x350_b4"));  // CPU input, moved by the model
  CHECK(f.cls.device().is_cuda());
  CHECK_THROWS_AS(dinov2::cls_matrix(f), dinov2::InputError);
  const auto host = f.cpu();
  // cuDNN convolutions may use TF32 (10-bit mantissa) by default on Ampere and newer GPUs.
  const double e_cls = max_abs_diff(host.cls, r.at("cls_126x350_b4"));
  const double e_patch =
      max_abs_diff(host.patches, on_grid(r.at("patches_126x350_b4"), host.patches));
  report("max abs error cuda cls", e_cls);
  report("max abs error cuda patches", e_patch);
  CHECK(e_cls <= 5e-2);
  CHECK(e_patch <= 5e-2);
  CHECK(at::cosine_similarity(host.cls, r.at("cls_126x350_b4"), 1).min().item<double>() >= 0.999);
  CHECK(dinov2::cls_matrix(host).rows() == 4);
}
