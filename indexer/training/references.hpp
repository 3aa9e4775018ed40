// Where a trained indexer stands: two references on the same validation requests.
//
//  bilinear    the best ranking a bilinear score qᵀ W k can give, with W fitted in closed form
//              (ridge least squares on q ⊗ k against the positive indicator, all candidate
//              pairs of the training requests, centred per refresh so only the ranking within
//              a refresh is fitted). A dual encoder with linear towers scores in this family
//              (with rank `dim`), so a trained indexer far below it has not converged, and one
//              above it has learned something non-linear. Features are standardised; a side
//              wider than `max_dims` is first projected on its leading principal directions.
//              The ridge is picked among `ridges` on the validation requests, so the reference
//              is slightly optimistic.
//  lsa_oracle  the true lookahead labels ranked first (what lsa_oracle selects): recall@k is
//              Σ min(k, P) / Σ P over refreshes with P positives, the ceiling of any indexer.
#pragma once

#include <cstdint>
#include <vector>

#include "indexer/training/trainer.hpp"

namespace kvlab {

struct BilinearOptions {
  int max_dims = 64;                                ///< per side, after standardising; wider sides are PCA-projected
  std::vector<double> ridges = {1e-5, 1e-3, 1e-1};  ///< relative to trace(XᵀX) / features
  int primary_k = 16;                               ///< picks the ridge; must be one of the ks
  int threads = 0;
};

struct IndexerReferences {
  std::vector<int> ks;
  std::vector<double> bilinear;  ///< recall per k on the validation requests
  std::vector<double> oracle;    ///< lsa_oracle's recall per k
  double ridge = 0;              ///< the relative ridge chosen
  int query_dims = 0;            ///< features per side the fit used (query side without its bias)
  int key_dims = 0;
  double seconds = 0;
};

/// lsa_oracle's recall@k over the groups of `requests`.
std::vector<double> oracle_recalls(const std::vector<IndexerRequest>& data, const std::vector<std::size_t>& requests,
                                   const std::vector<int>& ks);

/// Fits the bilinear reference on split.train and measures both references on split.val.
/// Throws InputError when either side of the split holds no usable group.
IndexerReferences indexer_references(const std::vector<IndexerRequest>& data, const IndexerSplit& split,
                                     const std::vector<int>& ks, const BilinearOptions& options = {});

}  // namespace kvlab
