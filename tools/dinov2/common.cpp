// SPDX-License-Identifier: Apache-2.0
#include "common.hpp"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <set>
#include <sstream>
#include <thread>

#include "dinov2/error.hpp"
#include "dinov2/runtime.hpp"

namespace dinov2::cli {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Model and recipe options

void ModelArgs::add_to(CLI::App* app) {
  app->add_option("--model,-m", path,
                  "Backbone: a file written by dinov2-export or `dinov2 convert`, or weights (a "
                  "Hugging Face folder or model.safetensors, an official .pth)")
      ->required()
      ->type_name("FILE");
  app->add_option("--architecture", architecture,
                  "With weights whose block count is not the official one: their architecture "
                  "file (python -m dinov2_export.architecture)")
      ->type_name("FILE");
  app->add_option("--device", device, "Where the model runs")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app->add_option(
         "--dtype", dtype,
         "Compute dtype (outputs are float32 whatever this is). float32 is the reference; auto "
         "is the throughput choice: bfloat16 where the hardware computes it (AVX512-BF16, "
         "AMX, CUDA 8.0+), else float32. bfloat16 is the safe reduced precision (slower "
         "than float32 on CPUs without bfloat16 hardware), float16 may overflow")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16", "auto"}))
      ->capture_default_str();
  app->add_option("--kernels", kernels,
                  "Kernels of the linear layers on the CPU (dinov2::Kernels): auto is the plan "
                  "measured fastest for this CPU; exported runs the file's graph as exported, "
                  "bit-identical to PyTorch; onednn and fused-gelu force a plan "
                  "(docs/BENCHMARKS.md)")
      ->check(CLI::IsMember({"auto", "onednn", "fused-gelu", "exported"}))
      ->capture_default_str();
  app->add_option("--threads", threads,
                  fmt::format("CPU threads for LibTorch (0: LibTorch's default, one per core; at "
                              "most {}, 4 per core)",
                              max_threads()))
      ->check(CLI::Range(0, max_threads()))
      ->capture_default_str();
  app->add_option("--max-pixels", max_pixels,
                  "Largest decoded image, in pixels, read from the file's header before decoding "
                  "(Pillow's decompression-bomb limit)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--max-file-size", max_file_mib, "Largest image file read, in MiB")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
}

ImageLimits& input_limits() {
  static ImageLimits limits;
  return limits;
}

int max_threads() {
  const unsigned cores = std::thread::hardware_concurrency();
  return 4 * static_cast<int>(cores == 0 ? 1 : cores);
}

Options ModelArgs::options() const {
  Options o;
  o.architecture_file = architecture;
  o.device = device == "cuda" ? Device::kCUDA : Device::kCPU;
  o.dtype = dtype == "bfloat16"  ? DType::kBFloat16
            : dtype == "float16" ? DType::kFloat16
            : dtype == "auto"    ? DType::kAuto
                                 : DType::kFloat32;
  o.kernels = kernels == "onednn"       ? Kernels::kOneDNN
              : kernels == "fused-gelu" ? Kernels::kFusedGelu
              : kernels == "exported"   ? Kernels::kExported
                                        : Kernels::kAuto;
  return o;
}

namespace {

/// How many times slower a ViT-S/14 MLP linear layer (256 tokens, 384 -> 1536) runs in bfloat16
/// than in float32 on this CPU: the fastest of three runs of each, after one warm-up.
double bfloat16_slowdown() {
  const at::Tensor x = at::randn({256, 384});
  const at::Tensor w = at::randn({1536, 384});
  const auto fastest = [](const at::Tensor& a, const at::Tensor& b) {
    c10::InferenceMode guard;
    at::linear(a, b);
    double best = 1e30;
    for (int i = 0; i < 3; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      at::linear(a, b);
      best = std::min(best,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  const double f32 = fastest(x, w);
  const double bf16 = fastest(x.to(at::kBFloat16), w.to(at::kBFloat16));
  return f32 > 0 ? bf16 / f32 : 1.0;
}

}  // namespace

Model ModelArgs::load() const {
  input_limits() =
      ImageLimits{}.with_max_pixels(max_pixels).with_max_file_bytes(max_file_mib << 20);
  configure_runtime(RuntimeSettings{}.with_threads(threads));
  Model model = Model::load(path, options());
  static bool warned = false;
  const CpuInfo cpu = cpu_info();
  if (!warned && model.dtype() == DType::kBFloat16 && model.options().device == Device::kCPU &&
      !cpu.native_bfloat16) {
    warned = true;
    std::cerr << fmt::format(
        "dinov2: warning: this CPU ({}, oneDNN {}) has no bfloat16 hardware (AVX512-BF16 or "
        "AMX), so bfloat16 is emulated: a ViT-S/14 linear layer just ran {:.1f}x slower in "
        "bfloat16 than in float32 here. --dtype float32 (exact) or --dtype auto is faster on "
        "this machine.\n",
        cpu.model, cpu.onednn_isa, bfloat16_slowdown());
  }
  return model;
}

std::string describe_model(const Model& model) {
  return fmt::format("model {} ({} blocks) on {}, {}; fused kernels: {}", model.info().variant,
                     model.info().depth, to_string(model.options().device), model.dtype_reason(),
                     model.fusion_reason());
}

nlohmann::json runtime_metadata(const Model& model) {
  return {{"cpu", nlohmann::json::parse(to_json(cpu_info()))},
          {"libtorch", TORCH_VERSION},
          {"compute_dtype", to_string(model.dtype())},
          {"requested_dtype", to_string(model.options().dtype)},
          {"dtype_reason", model.dtype_reason()},
          {"fused_layers", model.fused_layers()},
          {"fusion", model.fusion_reason()}};
}

Recipe parse_recipe(const std::string& name) {
  if (name == "square518") return Recipe::square(518);
  if (name == "eval224") return Recipe::eval_center_crop(256, 224);
  if (name == "aligned") return Recipe::patch_aligned(518);
  try {
    return Recipe::parse(name);
  } catch (const Error&) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: --recipe '{}' is not a recipe; use square518, eval224, "
                    "aligned, or a form such as square(448), "
                    "eval_center_crop(256,224), patch_aligned(1036)",
                    name));
  }
}

void check_finite_rows(const at::Tensor& rows, int64_t first_row, const std::string& what) {
  const at::Tensor bad = at::logical_not(at::isfinite(rows)).flatten(1).any(1);
  if (!bad.any().item<bool>()) return;
  const int64_t row = first_row + bad.nonzero()[0][0].item<int64_t>();
  throw InputError(
      fmt::format("dinov2: {} holds NaN or Inf in row {} ({} such rows here); "
                  "re-extract those features",
                  what, row, bad.sum().item<int64_t>()));
}

void add_image_inputs(CLI::App* app, std::vector<std::string>& inputs,
                      const std::string& type_name) {
  app->add_option("inputs", inputs, "Images, folders or @lists")->required()->type_name(type_name);
}

void add_output_folder(CLI::App* app, std::string& output) {
  app->add_option("--output,-o", output, "Output folder (created)")->required()->type_name("DIR");
}

void add_head_file(CLI::App* app, std::string& head, const std::string& help,
                   const std::string& type_name) {
  app->add_option("--head", head, help)->required()->check(CLI::ExistingFile)->type_name(type_name);
}

const char* recipe_help() {
  return "Preprocessing: square518 (resize to 518x518, the default), eval224 (shorter side "
         "256, centre crop 224: the official evaluation transform), aligned (keep the aspect "
         "ratio, longer side about 518, sides multiples of 14), or square(N), "
         "eval_center_crop(R,C), patch_aligned(S[,T]), resize(H,W)";
}

std::pair<int64_t, int64_t> parse_shard(const std::string& text) {
  const size_t slash = text.find('/');
  long long i = -1, n = -1;
  if (slash != std::string::npos) {
    try {
      size_t a = 0, b = 0;
      i = std::stoll(text.substr(0, slash), &a);
      n = std::stoll(text.substr(slash + 1), &b);
      if (a != slash || b != text.size() - slash - 1) i = n = -1;
    } catch (const std::logic_error&) {
      i = n = -1;
    }
  }
  if (i < 0 || n < 1 || i >= n) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: --shard '{}' must be I/N with 0 <= I < N, e.g. 0/4", text));
  }
  return {i, n};
}

// ---------------------------------------------------------------------------------------------
// Inputs

bool has_image_extension(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  static const char* const kExtensions[] = {".jpg", ".jpeg", ".png", ".bmp",
                                            ".tif", ".tiff", ".webp"};
  return std::any_of(std::begin(kExtensions), std::end(kExtensions),
                     [&](const char* e) { return ext == e; });
}

namespace {

/// Walks folders, each real folder once (`walked` holds their canonical paths).
void expand_path(const std::string& arg, std::vector<std::string>& out,
                 std::set<fs::path>& walked) {
  std::error_code ec;
  if (fs::is_directory(arg, ec)) {
    if (!walked.insert(fs::weakly_canonical(arg, ec)).second) {
      std::cerr << fmt::format("dinov2: note: {} was walked already; not listed twice\n", arg);
      return;
    }
    const auto options = fs::directory_options::follow_directory_symlink |
                         fs::directory_options::skip_permission_denied;
    fs::recursive_directory_iterator it(arg, options, ec), end;
    if (ec) {
      throw InputError(fmt::format("dinov2: cannot list the folder {} ({})", arg, ec.message()));
    }
    for (; it != end; it.increment(ec)) {
      if (ec) {
        throw InputError(fmt::format("dinov2: cannot list the folder {} ({})", arg, ec.message()));
      }
      std::error_code fec;
      if (it->is_directory(fec)) {
        const fs::path real = fs::canonical(it->path(), fec);
        if (fec || !walked.insert(real).second) {
          std::cerr << fmt::format(
              "dinov2: note: not following {}: {}\n", it->path().string(),
              fec ? fec.message()
                  : fmt::format("it leads to {}, a folder already walked (a symbolic-link loop "
                                "or a second way in)",
                                real.string()));
          it.disable_recursion_pending();
        }
        continue;
      }
      if (it->is_regular_file(fec) && has_image_extension(it->path().string())) {
        out.push_back(it->path().lexically_normal().string());
      }
    }
    return;
  }
  out.push_back(fs::path(arg).lexically_normal().string());
}

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

}  // namespace

std::vector<std::string> list_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    line = trim(line);
    if (!line.empty() && line[0] != '#') lines.push_back(std::move(line));
  }
  return lines;
}

std::vector<std::string> collect_inputs(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  std::set<fs::path> walked;
  for (const auto& arg : args) {
    if (arg.size() > 1 && arg[0] == '@') {
      const std::string list = arg.substr(1);
      std::error_code ec;
      const auto status = fs::status(list, ec);
      if (!ec && fs::exists(status) && !fs::is_regular_file(status)) {
        throw InputError(
            fmt::format("dinov2: the input list {} is not a regular file ({}); give "
                        "a text file with one path per line",
                        list, fs::is_directory(status) ? "a folder" : "a device, FIFO or socket"));
      }
      std::ifstream in(list);
      if (!in) {
        throw InputError(
            fmt::format("dinov2: cannot read the input list {} ({})", list, std::strerror(errno)));
      }
      const std::string text((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
      for (const auto& line : list_lines(text)) expand_path(line, out, walked);
      continue;
    }
    expand_path(arg, out, walked);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// ---------------------------------------------------------------------------------------------
// Images

ImageFile read_image(const std::string& path, bool apply_exif_orientation) {
  return try_load_image(path, input_limits(), apply_exif_orientation);
}

std::string dump_json(const nlohmann::json& value, int indent) {
  return value.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

void remove_tree(const std::string& path) noexcept {
  try {
    std::filesystem::remove_all(path);
  } catch (...) {  // what cannot be deleted stays; the caller's work is done either way
  }
}

// ---------------------------------------------------------------------------------------------
// Progress

Progress::Progress(int64_t total, int64_t already, std::string unit)
    : total_(total),
      done_(already),
      already_(already),
      unit_(std::move(unit)),
      tty_(::isatty(STDERR_FILENO) == 1),
      start_(Clock::now()),
      last_draw_(Clock::now()) {
  draw(true);
}

void Progress::advance(int64_t n) {
  done_ += n;
  draw(false);
}

void Progress::message(const std::string& line) {
  if (tty_ && drawn_) std::cerr << "\r\033[K";
  std::cerr << line << "\n";
  drawn_ = false;
  draw(true);
}

void Progress::draw(bool force) {
  if (!tty_) return;
  const auto now = Clock::now();
  if (!force && now - last_draw_ < std::chrono::milliseconds(100) && done_ < total_) return;
  last_draw_ = now;
  const double seconds = std::chrono::duration<double>(now - start_).count();
  const int64_t here = done_ - already_;
  const double rate = seconds > 0 ? static_cast<double>(here) / seconds : 0.0;
  constexpr int kWidth = 30;
  const int filled =
      total_ > 0
          ? static_cast<int>(kWidth * static_cast<double>(done_) / static_cast<double>(total_))
          : kWidth;
  std::string bar(static_cast<size_t>(filled), '=');
  if (filled < kWidth) bar += '>' + std::string(static_cast<size_t>(kWidth - filled - 1), ' ');
  std::string eta = "--";
  if (rate > 0 && done_ < total_) {
    const auto left = static_cast<int64_t>(static_cast<double>(total_ - done_) / rate);
    eta = left >= 3600 ? fmt::format("{}h{:02}m", left / 3600, left / 60 % 60)
                       : fmt::format("{}m{:02}s", left / 60, left % 60);
  }
  std::cerr << fmt::format("\r\033[K[{}] {}/{} {}  {:.2f} {}/s  ETA {}", bar, done_, total_, unit_,
                           rate, unit_, eta)
            << std::flush;
  drawn_ = true;
}

std::string Progress::finish() {
  if (tty_ && drawn_) std::cerr << "\r\033[K" << std::flush;
  drawn_ = false;
  const double seconds = std::chrono::duration<double>(Clock::now() - start_).count();
  const int64_t here = done_ - already_;
  const std::string counted = here == 1 && !unit_.empty() && unit_.back() == 's'
                                  ? unit_.substr(0, unit_.size() - 1)
                                  : unit_;
  std::string text = fmt::format("{} {} in {:.1f} s ({:.2f} {}/s)", here, counted, seconds,
                                 seconds > 0 ? static_cast<double>(here) / seconds : 0.0, unit_);
  if (already_ > 0) text += fmt::format(", {} done by an earlier run", already_);
  return text;
}

}  // namespace dinov2::cli
