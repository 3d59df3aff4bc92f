// SPDX-License-Identifier: Apache-2.0
// Model::load from downloaded weights (Hugging Face folders and safetensors, official .pth),
// without Python: the features and metadata equal those of the dinov2-export file of the same
// weights, and bad weight files are refused with the reason named. Data: tests/refgen/
// weights_refs.py. These cases are hidden ([.weights]): CTest runs them once, in a process whose
// environment holds no Python (tests/CMakeLists.txt, weights.without_python).
#include <ATen/ops/randn.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "dinov2/error.hpp"
#include "dinov2/model.hpp"
#include "support.hpp"

using dinov2::Model;
using dinov2::ModelFileError;
using dinov2::Options;
using namespace dinov2::test;

namespace {

std::string weights(const std::string& name) { return data_path("weights/" + name); }

/// The options a case needs: its architecture file when the depth is reduced.
Options options_for(const std::string& name) {
  Options o;
  const std::string arch = weights(name + "/architecture.pt");
  if (std::filesystem::exists(arch)) o.architecture_file = arch;
  return o;
}

/// When CTest runs these cases as weights.without_python, nothing of Python may be in reach.
void check_no_python_environment() {
  if (std::getenv("DINOV2_EXPECT_NO_PYTHON") == nullptr) return;
  CHECK(std::getenv("VIRTUAL_ENV") == nullptr);
  CHECK(std::getenv("PYTHONPATH") == nullptr);
  const char* path = std::getenv("PATH");
  REQUIRE(path != nullptr);
  CHECK(std::string(path).find("venv") == std::string::npos);
}

/// Every output of each weight format of case `name`, at three sizes, against the export.
void check_case(const std::string& name) {
  check_no_python_environment();
  const Options o = options_for(name);
  const Model reference = Model::load(weights(name + "/export_hf.pt"));
  const std::string sources[] = {name + "/hf", name + "/hf/model.safetensors",
                                 name + "/official.pth"};
  at::manual_seed(7);
  const at::Tensor inputs[] = {at::randn({2, 3, 224, 224}), at::randn({1, 3, 518, 518}),
                               at::randn({1, 3, 280, 462})};
  for (const std::string& source : sources) {
    const Model m = Model::load(weights(source), o);
    CHECK(m.info().variant == reference.info().variant);
    CHECK(m.info().depth == reference.info().depth);
    CHECK(m.fused_layers() == reference.fused_layers());
    for (const at::Tensor& x : inputs) {
      const auto got = m.extract_features(x, /*with_prenorm=*/true);
      const auto want = reference.extract_features(x, /*with_prenorm=*/true);
      const double err = std::max(
          {max_abs_diff(got.cls, want.cls), max_abs_diff(got.registers, want.registers),
           max_abs_diff(got.patches, want.patches), max_abs_diff(got.prenorm, want.prenorm)});
      INFO(source << " at " << x.size(2) << "x" << x.size(3) << ": max abs " << err);
      std::printf("weights: %-28s %4ldx%-4ld max abs %.3g\n", source.c_str(), x.size(2), x.size(3),
                  err);
      CHECK(err <= 1e-6);
    }
  }
}

/// Model::load(path) fails with a ModelFileError whose message holds `needle`.
void check_refused(const std::string& path, const std::string& needle, Options o = {}) {
  const std::string msg = message_of<ModelFileError>([&] { Model::load(path, o); });
  INFO(msg);
  CHECK_THAT(msg, ContainsSubstring(needle));
}

}  // namespace

TEST_CASE("S/14 and S/14 with registers from weights equal their exports", "[.weights]") {
  check_case("s");
  check_case("s_reg");
}

TEST_CASE("B/14 from weights equals its export, with and without registers", "[.weights]") {
  check_case("b");
  check_case("b_reg");
}

TEST_CASE("L/14 from weights equals its export, with and without registers", "[.weights]") {
  check_case("l");
  check_case("l_reg");
}

TEST_CASE("g/14 (SwiGLU) from weights equals its export, with and without registers",
          "[.weights]") {
  check_case("g");
  check_case("g_reg");
}

TEST_CASE("intermediate layers and CLS attention of a model from weights equal the export's",
          "[.weights]") {
  const Model reference = Model::load(weights("s_reg/export_hf.pt"));
  const Model m = Model::load(weights("s_reg/hf"));
  at::manual_seed(3);
  const at::Tensor x = at::randn({2, 3, 280, 462});
  const auto got = m.intermediate_layers(x, dinov2::LayerRequest{{0, 5, -1}, true});
  const auto want = reference.intermediate_layers(x, dinov2::LayerRequest{{0, 5, -1}, true});
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    CHECK(max_abs_diff(got.patches[i], want.patches[i]) <= 1e-6);
    CHECK(max_abs_diff(got.cls[i], want.cls[i]) <= 1e-6);
  }
  CHECK(max_abs_diff(m.cls_attention(x), reference.cls_attention(x)) <= 1e-6);
}

TEST_CASE("the metadata of a model from weights is what dinov2-export writes for them",
          "[.weights]") {
  for (const char* name : {"s", "s_reg"}) {
    for (const auto& [source, exported] :
         {std::pair<std::string, std::string>{"/hf", "/export_hf.pt"},
          {"/hf/model.safetensors", "/export_hf.pt"},
          {"/official.pth", "/export_official.pt"}}) {
      const Model from_weights = Model::load(weights(name + source));
      const Model from_export = Model::load(weights(name + exported));
      const auto& got = from_weights.info();
      const auto& want = from_export.info();
      INFO(name << source);
      CHECK(got.variant == want.variant);
      CHECK(got.embed_dim == want.embed_dim);
      CHECK(got.depth == want.depth);
      CHECK(got.num_heads == want.num_heads);
      CHECK(got.patch_size == want.patch_size);
      CHECK(got.num_register_tokens == want.num_register_tokens);
      CHECK(got.ffn == want.ffn);
      CHECK(got.pos_grid_h == want.pos_grid_h);
      CHECK(got.pos_grid_w == want.pos_grid_w);
      CHECK(got.mean == want.mean);
      CHECK(got.std == want.std);
      CHECK(got.default_resolution == want.default_resolution);
      CHECK(got.dtype == want.dtype);
      CHECK(got.exporter_version == want.exporter_version);
      CHECK(got.torch_version == want.torch_version);
      CHECK(got.weights_source == want.weights_source);
      CHECK(got.weights_sha256 == want.weights_sha256);
      CHECK(got.format_version == want.format_version);
      CHECK(got.backend == want.backend);
    }
  }
  CHECK(Model::load(weights("s/official.pth")).info().weights_source == "official");
  CHECK(Model::load(weights("s/hf")).info().weights_source == "huggingface");
}

TEST_CASE("weight files with a wrong key, shape or config are refused with the reason",
          "[.weights]") {
  Options o;
  o.architecture_file = weights("refuse/architecture.pt");
  const auto r = [](const std::string& name) { return weights("refuse/" + name); };
  check_refused(r("missing_key.pth"), "missing key 'blocks.1.norm1.weight' (expected shape [384])",
                o);
  check_refused(r("unexpected_key.pth"), "unexpected key 'blocks.1.extra.weight'", o);
  check_refused(r("wrong_shape.pth"), "key 'norm.weight' has shape [383], expected [384]", o);
  check_refused(r("not_a_tensor.pth"), "checkpoint entry 'cls_token' is a String, not a tensor", o);
  check_refused(r("wrong_key.safetensors"),
                "unexpected key 'encoder.layer.0.attention.bogus.weight'", o);
  check_refused(r("wrong_shape.safetensors"),
                "key 'blocks.1.mlp.fc1.weight' has shape [1536, 380], expected [1536, 384]", o);
  check_refused(r("hf_conflicting_config"),
                "\"num_hidden_layers\" is 12, but the weights hold 2 blocks", o);
  check_refused(r("truncated.safetensors"), "truncated", o);
  check_refused(r("truncated.pth"), "truncated.pth", o);
  check_refused(r("legacy.pth"), "legacy format", o);
  // Reduced depth without an architecture file, and an architecture file that does not exist.
  check_refused(r("good.pth"), "needs an architecture file");
  Options missing;
  missing.architecture_file = r("no_such_architecture.pt");
  check_refused(r("good.pth"), "cannot open the architecture file", missing);
  // The same weights load with the right options.
  CHECK(Model::load(r("good.pth"), o).info().depth == 2);
  CHECK(Model::load(r("hf"), o).info().depth == 2);
}

TEST_CASE(
    "a training checkpoint that names OrderedDict by a four-byte memo index loads its teacher",
    "[.weights]") {
  Options o;
  o.architecture_file = weights("refuse/architecture.pt");
  const Model want = Model::load(weights("refuse/good.pth"), o);
  const Model got = Model::load(weights("refuse/nested_long_memo.pth"), o);
  at::manual_seed(3);
  const at::Tensor x = at::randn({1, 3, 224, 224});
  const auto a = got.extract_features(x);
  const auto b = want.extract_features(x);
  CHECK(max_abs_diff(a.cls, b.cls) == 0);
  CHECK(max_abs_diff(a.patches, b.patches) == 0);
}

TEST_CASE("a .pth whose pickle calls a function is refused without running it", "[.weights]") {
  check_no_python_environment();
  Options o;
  o.architecture_file = weights("refuse/architecture.pt");
  const std::string msg =
      message_of<ModelFileError>([&] { Model::load(weights("refuse/callable.pth"), o); });
  INFO(msg);
  CHECK_THAT(msg, ContainsSubstring("system"));
  CHECK_THAT(msg, ContainsSubstring("only tensors, dicts and plain values"));
  CHECK_FALSE(std::filesystem::exists(weights("callable_ran")));
}

TEST_CASE("convert_weights writes a file that loads as the export of the same weights",
          "[.weights]") {
  const TempDir dir;
  const std::string out = dir.file("converted.pt");
  const dinov2::ModelInfo info = dinov2::convert_weights(weights("s_reg/official.pth"), out);
  CHECK(info.variant == "dinov2_vits14_reg");
  const Model converted = Model::load(out);
  const Model reference = Model::load(weights("s_reg/export_official.pt"));
  CHECK(converted.info().weights_sha256 == reference.info().weights_sha256);
  CHECK(converted.info().weights_source == "official");
  at::manual_seed(5);
  const at::Tensor x = at::randn({1, 3, 280, 462});
  const auto got = converted.extract_features(x);
  const auto want = reference.extract_features(x);
  CHECK(max_abs_diff(got.cls, want.cls) == 0.0);
  CHECK(max_abs_diff(got.patches, want.patches) == 0.0);
  CHECK_FALSE(std::filesystem::exists(out + ".partial"));
  // A .pt is not weights; an unwritable output is an InputError and leaves nothing behind.
  CHECK_THAT(message_of<ModelFileError>(
                 [&] { dinov2::convert_weights(weights("s_reg/export_hf.pt"), dir.file("x.pt")); }),
             ContainsSubstring("already a dinov2-export file"));
  CHECK_THROWS_AS(dinov2::convert_weights(weights("s_reg/hf"), dir.file("no/such/folder/x.pt")),
                  dinov2::InputError);
}
