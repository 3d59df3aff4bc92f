// SPDX-License-Identifier: Apache-2.0
// kNN retrieval: CLS features of a set of images, the three nearest neighbours of each by cosine
// similarity, and the leave-one-out accuracy of the weighted kNN classifier (k = 20, T = 0.07)
// when the images sit in one subfolder per class.
//
//   knn_retrieval MODEL.pt DATASET_DIR
#include <dinov2/model.hpp>
#include <dinov2/opencv.hpp>
#include <dinov2/preprocess.hpp>
#include <dinov2/probe.hpp>
#include <dinov2/retrieval.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt DATASET_DIR\n";
    return 2;
  }
  try {
    std::vector<std::string> paths;
    for (const auto& f : fs::recursive_directory_iterator(argv[2])) {
      if (f.is_regular_file()) paths.push_back(f.path().string());
    }
    std::sort(paths.begin(), paths.end());
    const dinov2::Model model = dinov2::Model::load(argv[1]);
    const dinov2::Preprocessor pre(dinov2::Recipe::eval_center_crop(256, 224));
    std::vector<at::Tensor> cls;
    std::vector<int64_t> labels;
    std::map<std::string, int64_t> classes;  // parent folder name -> label
    for (const auto& p : paths) {
      cls.push_back(model.extract_features(pre(dinov2::image_view(dinov2::load_image(p)))).cls);
      const auto name = fs::path(p).parent_path().filename().string();
      labels.push_back(classes.emplace(name, static_cast<int64_t>(classes.size())).first->second);
    }
    const at::Tensor x = at::cat(cls);  // [N, D]

    // Each image's neighbours; the first hit is the image itself (similarity 1).
    const dinov2::SearchResult hits = dinov2::cosine_top_k(x, x, 4);
    for (size_t q = 0; q < paths.size(); ++q) {
      std::cout << paths[q] << "\n";
      for (int64_t j = 1; j < hits.indices.size(1); ++j) {
        std::cout << "  " << hits.scores[q][j].item<float>() << "  "
                  << paths[hits.indices[q][j].item<int64_t>()] << "\n";
      }
    }

    // Leave-one-out kNN: classify every image with all the others as the memory bank.
    int64_t correct = 0;
    const auto n = static_cast<int64_t>(paths.size());
    const at::Tensor y = at::tensor(labels, at::kLong);
    for (int64_t i = 0; i < n; ++i) {
      const at::Tensor others = at::cat({at::arange(0, i), at::arange(i + 1, n)});
      const dinov2::KnnClassifier knn(x.index_select(0, others), y.index_select(0, others),
                                      static_cast<int64_t>(classes.size()));
      correct += knn.predict(x.slice(0, i, i + 1))[0].item<int64_t>() == labels[i];
    }
    std::cout << "kNN (k = 20, T = 0.07) leave-one-out top-1: " << 100.0 * correct / n << " % over "
              << classes.size() << " classes\n";
    return 0;
  } catch (const dinov2::Error& e) {
    std::cerr << e.what() << "\n";
    return 1;
  } catch (const fs::filesystem_error& e) {
    std::cerr << "cannot read the images: " << e.what() << "\n";
    return 1;
  }
}
