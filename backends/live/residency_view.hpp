// Adapts the engine's kvlab::Residency to the decoder's non-owning ResidencyView.
#pragma once

#include <vector>

#include "backends/live/decoder.hpp"
#include "core/residency.hpp"

namespace kvlab {

/// Owns the per-row ResidentChunks views over a Residency (which must outlive it and stay
/// unchanged while the view is used). A uniform Residency gives the uniform form; per-row
/// residency with one stored head per layer (heads aggregated) is expanded to every KV head.
class ResidencyRows {
 public:
  ResidencyRows(const Residency& residency, int n_layers, int n_kv_heads) {
    auto view_of = [](const ChunkMask& m) { return ResidentChunks{m.words().data(), m.size()}; };
    if (residency.uniform()) {
      rows_.push_back(view_of(residency.row(0)));
      return;
    }
    const RowLayout layout = residency.layout();
    for (int l = 0; l < n_layers; ++l) {
      for (int g = 0; g < n_kv_heads; ++g) {
        rows_.push_back(view_of(residency.row(layout.row(l, layout.heads_stored == 1 ? 0 : g))));
      }
    }
  }

  [[nodiscard]] ResidencyView view() const { return ResidencyView{rows_}; }

 private:
  std::vector<ResidentChunks> rows_;
};

}  // namespace kvlab
