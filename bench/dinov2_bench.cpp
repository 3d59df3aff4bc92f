// SPDX-License-Identifier: Apache-2.0
// The C++ side of the benchmark harness (bench/run.py drives it and the Python reference).
// Each mode prints one JSON object on stdout; times are in seconds.
//
//   dinov2_bench model      --model F --size S --batch B [--iters N] [--warmup W] [--threads T]
//                           [--dtype D] [--device cpu|cuda] [--input cpu|pinned|pageable|cuda]
//                           [--fused 0|1] [--kernels auto|onednn|fused-gelu|exported]
//   dinov2_bench preprocess --images DIR [--size S] [--iters N] [--threads T]
//   dinov2_bench e2e        --model F --images DIR [--size S] [--batch B] [--threads T]
//                           [--workers K] [--device cpu|cuda]
//   dinov2_bench matmul     [--n N] [--iters N] [--threads T]
//   dinov2_bench load       --model F [--architecture A]   (one load: time and memory; run it in
//                           a fresh process per measurement, as bench/load.py does)
//
// With --device cuda the input batch starts on the CPU, as a preprocessed batch does, and the
// library copies it; the clock is read after the GPU has finished (torch::cuda::synchronize).
// --input says where the batch is: cpu (default: the library stages it in pinned memory), pinned
// (already page-locked), pageable (copied to the GPU by a plain blocking `to` in each timed call,
// before the library sees it) or cuda (on the GPU before the clock starts: the model alone).
// Built against a CUDA LibTorch (DINOV2_BENCH_CUDA, set by bench/CMakeLists.txt), the model mode
// also reports the GPU's name and the peak GPU memory of the caching allocator.
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#if DINOV2_BENCH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "dinov2/model.hpp"
#include "dinov2/opencv.hpp"
#include "dinov2/preprocess.hpp"
#include "dinov2/runtime.hpp"

namespace {

using Clock = std::chrono::steady_clock;

#ifdef TORCH_VERSION
constexpr const char* kTorchVersion = TORCH_VERSION;
#else
constexpr const char* kTorchVersion = "unknown";
#endif

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0.0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

/// A field of /proc/self/status in MB (VmRSS: resident now, VmHWM: its peak), or -1. Unlike
/// ru_maxrss, which execve keeps from the parent process, VmHWM belongs to this program alone.
double status_mb(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stod(line.substr(field.size() + 1)) / 1024.0;
  }
  return -1;
}

/// Peak resident memory of this program, in MB.
double peak_rss_mb() { return status_mb("VmHWM"); }

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string json_list(const std::vector<double>& v) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < v.size(); ++i) out << (i ? ", " : "") << v[i];
  out << "]";
  return out.str();
}

struct Args {
  std::map<std::string, std::string> values;
  std::string get(const std::string& key, const std::string& fallback = "") const {
    auto it = values.find(key);
    return it == values.end() ? fallback : it->second;
  }
  int integer(const std::string& key, int fallback) const {
    auto it = values.find(key);
    return it == values.end() ? fallback : std::stoi(it->second);
  }
};

Args parse(int argc, char** argv) {
  Args args;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string key = argv[i];
    if (key.rfind("--", 0) != 0) throw std::invalid_argument("expected --option value, got " + key);
    args.values[key.substr(2)] = argv[i + 1];
  }
  return args;
}

std::vector<std::string> list_images(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const auto ext = entry.path().extension().string();
    if (ext == ".jpg" || ext == ".jpeg" || ext == ".png") files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) throw std::runtime_error("no images in " + dir);
  return files;
}

dinov2::Options options_from(const Args& args) {
  dinov2::configure_runtime(dinov2::RuntimeSettings{}
                                .with_threads(args.integer("threads", 0))
                                .with_profiled_runs(args.integer("profiled-runs", 0)));
  dinov2::Options options;
  options.with_fused_kernels(args.integer("fused", 1) != 0);
  const std::string kernels = args.get("kernels", "auto");
  if (kernels == "onednn") options.with_kernels(dinov2::Kernels::kOneDNN);
  if (kernels == "fused-gelu") options.with_kernels(dinov2::Kernels::kFusedGelu);
  if (kernels == "exported") options.with_kernels(dinov2::Kernels::kExported);
  if (kernels != "auto" && kernels != "onednn" && kernels != "fused-gelu" && kernels != "exported")
    throw std::invalid_argument("--kernels must be auto, onednn, fused-gelu or exported");
  const std::string dtype = args.get("dtype", "float32");
  if (dtype == "bfloat16") options.with_dtype(dinov2::DType::kBFloat16);
  if (dtype == "float16") options.with_dtype(dinov2::DType::kFloat16);
  if (dtype == "auto") options.with_dtype(dinov2::DType::kAuto);
  const std::string device = args.get("device", "cpu");
  if (device == "cuda") {
    options.with_device(dinov2::Device::kCUDA, args.integer("device-index", 0));
  } else if (device != "cpu") {
    throw std::invalid_argument("--device must be cpu or cuda, got " + device);
  }
  return options;
}

bool on_cuda(const Args& args) { return args.get("device", "cpu") == "cuda"; }

/// Waits for the GPU's queued work when the model runs there, so that the clock covers it.
void wait_for_device(const Args& args) {
  if (on_cuda(args)) torch::cuda::synchronize();
}

/// The GPU's name and the caching allocator's peak (MB) since the last reset_gpu_peak, where this
/// program was built against a CUDA LibTorch; {"", -1} otherwise.
std::pair<std::string, double> gpu_name_and_peak_mb(const Args& args) {
#if DINOV2_BENCH_CUDA
  if (on_cuda(args)) {
    const int index = args.integer("device-index", 0);
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
    // allocated_bytes[0] is the aggregate over the small and large pools.
    const double peak = static_cast<double>(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0);
    return {at::cuda::getDeviceProperties(index)->name, peak};
  }
#else
  (void)args;
#endif
  return {"", -1.0};
}

void reset_gpu_peak(const Args& args) {
#if DINOV2_BENCH_CUDA
  if (on_cuda(args))
    c10::cuda::CUDACachingAllocator::resetPeakStats(args.integer("device-index", 0));
#else
  (void)args;
#endif
}

// Model only: a fixed random batch, the median of timed forward passes after warm-up.
int run_model(const Args& args) {
  const auto t0 = Clock::now();
  auto model = dinov2::Model::load(args.get("model"), options_from(args));
  const double load_s = seconds_since(t0);
  const int size = args.integer("size", 224), batch = args.integer("batch", 1);
  const int iters = args.integer("iters", 10), warmup = args.integer("warmup", 2);
  torch::manual_seed(0);  // the same input as the Python reference, for the checksum
  auto pixels = torch::randn({batch, 3, size, size});
  const std::string input = on_cuda(args) ? args.get("input", "cpu") : "cpu";
  const c10::Device device(c10::DeviceType::CUDA,
                           static_cast<c10::DeviceIndex>(args.integer("device-index", 0)));
  if (input == "pinned") pixels = pixels.pin_memory();
  if (input == "cuda") pixels = pixels.to(device);
  if (input != "cpu" && input != "pinned" && input != "pageable" && input != "cuda") {
    throw std::invalid_argument("--input must be cpu, pinned, pageable or cuda, got " + input);
  }
  std::vector<double> times;
  dinov2::Features f;
  wait_for_device(args);
  reset_gpu_peak(args);
  for (int i = 0; i < warmup + iters; ++i) {
    const auto t = Clock::now();
    f = model.extract_features(input == "pageable" ? pixels.to(device) : pixels);
    wait_for_device(args);
    if (i >= warmup) times.push_back(seconds_since(t));
  }
  const auto [gpu, peak_gpu_mb] = gpu_name_and_peak_mb(args);
  const double checksum = f.cls.sum().item<double>();
  std::string cosine = "null";
  if (args.get("dtype", "float32") != "float32") {
    // Reduced precision is only worth it if the features stay those of float32.
    auto reference = dinov2::Model::load(args.get("model"),
                                         options_from(args).with_dtype(dinov2::DType::kFloat32));
    const auto ref = reference.extract_features(pixels).cls;
    cosine = std::to_string(at::cosine_similarity(ref, f.cls, 1).min().item<double>());
  }
  std::cout << "{\"mode\": \"model\", \"device\": " << json_string(args.get("device", "cpu"))
            << ", \"input\": " << json_string(input)
            << ", \"gpu\": " << (gpu.empty() ? "null" : json_string(gpu))
            << ", \"torch\": " << json_string(kTorchVersion)
            << ", \"cpu\": " << json_string(dinov2::to_string(dinov2::cpu_info()))
            << ", \"compute_dtype\": " << json_string(dinov2::to_string(model.dtype()))
            << ", \"fused_layers\": " << model.fused_layers()
            << ", \"fusion\": " << json_string(model.fusion_reason())
            << ", \"min_cls_cosine\": " << cosine << ", \"load_s\": " << load_s
            << ", \"median_s\": " << median(times) << ", \"times\": " << json_list(times)
            << ", \"images_per_s\": " << batch / median(times)
            << ", \"peak_rss_mb\": " << peak_rss_mb() << ", \"peak_gpu_mb\": "
            << (peak_gpu_mb < 0 ? std::string("null") : std::to_string(peak_gpu_mb))
            << ", \"threads\": " << at::get_num_threads() << ", \"checksum\": " << checksum
            << "}\n";
  return 0;
}

// Preprocessing alone: decoded images in memory, resize + normalise per image.
int run_preprocess(const Args& args) {
  if (args.integer("threads", 0) > 0) at::set_num_threads(args.integer("threads", 0));
  const auto files = list_images(args.get("images"));
  std::vector<cv::Mat> images;
  for (const auto& f : files) images.push_back(dinov2::load_image(f));
  dinov2::Preprocessor pre(dinov2::Recipe::square(args.integer("size", 518)));
  const int iters = args.integer("iters", 3);
  std::vector<double> per_image;
  for (int it = 0; it < iters + 1; ++it) {
    for (const auto& image : images) {
      const auto t = Clock::now();
      auto batch = pre(dinov2::image_view(image));
      if (it > 0) per_image.push_back(seconds_since(t));  // first pass is warm-up
    }
  }
  std::cout << "{\"mode\": \"preprocess\", \"median_s\": " << median(per_image)
            << ", \"images\": " << images.size() << ", \"peak_rss_mb\": " << peak_rss_mb()
            << ", \"threads\": " << at::get_num_threads() << "}\n";
  return 0;
}

// End to end with the library's batch API: JPEG files -> features in memory. Decoding and
// preprocessing run on `workers` threads and overlap the forward pass of the previous batch.
int run_e2e(const Args& args) {
  auto model = dinov2::Model::load(args.get("model"), options_from(args));
  const auto files = list_images(args.get("images"));
  const int size = args.integer("size", 224), batch_size = args.integer("batch", 8);
  const int workers = std::max(1, args.integer("workers", 1));
  const dinov2::Preprocessor pre(args.get("recipe", "eval") == "square"
                                     ? dinov2::Recipe::square(size)
                                     : dinov2::Recipe::eval_center_crop(size * 256 / 224, size));

  const auto t0 = Clock::now();
  std::mutex mutex;
  std::condition_variable ready;
  const size_t batches = (files.size() + batch_size - 1) / batch_size;
  std::vector<std::optional<dinov2::Batch>> done(batches);
  size_t next_batch = 0;
  std::vector<std::thread> pool;
  for (int w = 0; w < workers; ++w) {
    pool.emplace_back([&] {
      for (;;) {
        size_t b;
        {
          std::lock_guard<std::mutex> lock(mutex);
          if (next_batch >= batches) return;
          b = next_batch++;
        }
        std::vector<cv::Mat> images;
        std::vector<dinov2::ImageView> views;
        for (size_t i = b * batch_size; i < std::min(files.size(), (b + 1) * batch_size); ++i) {
          images.push_back(dinov2::load_image(files[i]));
        }
        for (const auto& m : images) views.push_back(dinov2::image_view(m));
        auto prepared = pre(views);
        {
          std::lock_guard<std::mutex> lock(mutex);
          done[b] = std::move(prepared);
        }
        ready.notify_all();
      }
    });
  }
  double checksum = 0.0;
  for (size_t b = 0; b < batches; ++b) {
    dinov2::Batch batch;
    {
      std::unique_lock<std::mutex> lock(mutex);
      ready.wait(lock, [&] { return done[b].has_value(); });
      batch = std::move(*done[b]);
      done[b].reset();
    }
    checksum += model.extract_features(batch).cls.sum().item<double>();
  }
  for (auto& t : pool) t.join();
  const double total = seconds_since(t0);
  std::cout << "{\"mode\": \"e2e\", \"total_s\": " << total << ", \"images\": " << files.size()
            << ", \"images_per_s\": " << files.size() / total
            << ", \"peak_rss_mb\": " << peak_rss_mb() << ", \"threads\": " << at::get_num_threads()
            << ", \"checksum\": " << checksum << "}\n";
  return 0;
}

// One Model::load of a file or of weights: its wall time, and the memory before, after and at
// the peak (which includes the one-patch forward pass Model::load runs).
int run_load(const Args& args) {
  dinov2::configure_runtime(dinov2::RuntimeSettings{}.with_threads(args.integer("threads", 0)));
  dinov2::Options options = options_from(args);
  options.architecture_file = args.get("architecture", "");
  const double before = status_mb("VmRSS");
  const auto t0 = Clock::now();
  const auto model = dinov2::Model::load(args.get("model"), options);
  const double load_s = seconds_since(t0);
  std::cout << "{\"mode\": \"load\", \"model\": " << json_string(args.get("model"))
            << ", \"variant\": " << json_string(model.info().variant) << ", \"load_s\": " << load_s
            << ", \"rss_before_mb\": " << before << ", \"rss_after_mb\": " << status_mb("VmRSS")
            << ", \"peak_rss_mb\": " << peak_rss_mb()
            << ", \"fusion\": " << json_string(model.fusion_reason()) << "}\n";
  return 0;
}

// The machine's float32 matrix-multiply rate, the denominator of the FLOP utilisation.
int run_matmul(const Args& args) {
  if (args.integer("threads", 0) > 0) at::set_num_threads(args.integer("threads", 0));
  const int n = args.integer("n", 2048), iters = args.integer("iters", 10);
  const auto a = torch::randn({n, n}), b = torch::randn({n, n});
  std::vector<double> times;
  for (int i = 0; i < iters + 2; ++i) {
    const auto t = Clock::now();
    auto c = at::mm(a, b);
    if (i >= 2) times.push_back(seconds_since(t));
  }
  const double flops = 2.0 * n * static_cast<double>(n) * n;
  std::cout << "{\"mode\": \"matmul\", \"n\": " << n << ", \"median_s\": " << median(times)
            << ", \"gflops\": " << flops / median(times) / 1e9
            << ", \"threads\": " << at::get_num_threads() << "}\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: dinov2_bench model|preprocess|e2e|matmul|load --option value ...\n";
    return 2;
  }
  try {
    const std::string mode = argv[1];
    const Args args = parse(argc, argv);
    if (mode == "model") return run_model(args);
    if (mode == "preprocess") return run_preprocess(args);
    if (mode == "e2e") return run_e2e(args);
    if (mode == "matmul") return run_matmul(args);
    if (mode == "load") return run_load(args);
    std::cerr << "dinov2_bench: unknown mode " << mode << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "dinov2_bench: " << e.what() << "\n";
    return 1;
  }
}
