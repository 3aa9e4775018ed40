#include "indexer/training/references.hpp"

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.hpp"
#include "indexer/training/parallel.hpp"

namespace kvlab {
namespace {

using MatrixD = Eigen::MatrixXd;
using VectorD = Eigen::VectorXd;
using RowMatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Standardisation, then (for wide features) projection on the leading principal directions.
struct FeatureMap {
  VectorD mean;
  VectorD inv_std;
  MatrixD projection;  // d × m

  [[nodiscard]] VectorD apply(const Eigen::Ref<const Eigen::VectorXf>& x) const {
    const VectorD z = (x.cast<double>() - mean).cwiseProduct(inv_std);
    return projection.transpose() * z;
  }
  [[nodiscard]] int dims() const { return static_cast<int>(projection.cols()); }
};

/// Rows of `samples` (n × d) → a map to at most max_dims standardised principal coordinates.
FeatureMap fit_feature_map(const MatrixD& samples, int max_dims) {
  FeatureMap map;
  const auto n = static_cast<double>(samples.rows());
  map.mean = samples.colwise().mean().transpose();
  const MatrixD centred = samples.rowwise() - map.mean.transpose();
  const VectorD var = centred.colwise().squaredNorm().transpose() / std::max(n, 1.0);
  map.inv_std = var.unaryExpr([](double v) { return v > 1e-12 ? 1.0 / std::sqrt(v) : 0.0; });
  const auto d = static_cast<int>(samples.cols());
  if (d <= max_dims) {
    map.projection = MatrixD::Identity(d, d);
    return map;
  }
  const MatrixD z = centred * map.inv_std.asDiagonal();
  const Eigen::SelfAdjointEigenSolver<MatrixD> eig(z.transpose() * z / std::max(n, 1.0));
  map.projection = eig.eigenvectors().rightCols(max_dims);  // eigenvalues ascend
  return map;
}

struct Group {
  std::size_t request;
  std::size_t group;
};

std::vector<Group> groups_of(const std::vector<IndexerRequest>& data, const std::vector<std::size_t>& requests) {
  std::vector<Group> out;
  for (const std::size_t r : requests) {
    for (std::size_t g = 0; g < data[r].groups.size(); ++g) {
      const IndexerGroup& group = data[r].groups[g];
      const bool any_positive = std::any_of(group.target.begin(), group.target.end(), [](float t) { return t > 0; });
      if (!group.candidate_rows.empty() && any_positive) out.push_back({r, g});
    }
  }
  return out;
}

/// The normal equations of ridge least squares on q' ⊗ k' (q' = [query; 1]) against the
/// positive indicator, centred per group. Σ_g (q'q'ᵀ) ⊗ C_g is accumulated as one matrix
/// product per block of groups (vec(q'q'ᵀ) against vec(C_g)), then rearranged.
struct NormalEquations {
  MatrixD a;  // D × D, D = mq · mk, index i·mk + a
  VectorD b;
};

NormalEquations accumulate(const std::vector<IndexerRequest>& data, const std::vector<Group>& groups,
                           const FeatureMap& queries, const std::vector<MatrixD>& keys, int threads) {
  const int mq = queries.dims() + 1;
  const int mk = static_cast<int>(keys.front().cols());
  MatrixD by_outer = MatrixD::Zero(static_cast<Eigen::Index>(mq) * mq, static_cast<Eigen::Index>(mk) * mk);
  VectorD b = VectorD::Zero(static_cast<Eigen::Index>(mq) * mk);
  constexpr std::size_t kBlock = 256;
  RowMatrixD qq(kBlock, mq * mq);
  RowMatrixD cc(kBlock, mk * mk);
  std::vector<VectorD> qs(kBlock);
  std::vector<VectorD> ss(kBlock);
  for (std::size_t first = 0; first < groups.size(); first += kBlock) {
    const std::size_t count = std::min(kBlock, groups.size() - first);
    parallel_for(count, threads, [&](std::size_t j) {
      const Group& at = groups[first + j];
      const IndexerGroup& group = data[at.request].groups[at.group];
      VectorD q(mq);
      q.head(mq - 1) = queries.apply(group.query);
      q(mq - 1) = 1.0;
      MatrixD k(static_cast<Eigen::Index>(group.candidate_rows.size()), mk);
      for (std::size_t c = 0; c < group.candidate_rows.size(); ++c) {
        k.row(static_cast<Eigen::Index>(c)) = keys[at.request].row(group.candidate_rows[c]);
      }
      k.rowwise() -= k.colwise().mean();
      VectorD y(k.rows());
      for (Eigen::Index c = 0; c < y.size(); ++c) y(c) = group.target[static_cast<std::size_t>(c)] > 0 ? 1.0 : 0.0;
      const MatrixD c_g = k.transpose() * k;
      Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
          cc.row(static_cast<Eigen::Index>(j)).data(), mk, mk) = c_g;
      Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
          qq.row(static_cast<Eigen::Index>(j)).data(), mq, mq) = q * q.transpose();
      qs[j] = q;
      ss[j] = k.transpose() * y;
    });
    const auto rows = static_cast<Eigen::Index>(count);
    by_outer.noalias() += qq.topRows(rows).transpose() * cc.topRows(rows);
    for (std::size_t j = 0; j < count; ++j) {
      for (int i = 0; i < mq; ++i) b.segment(static_cast<Eigen::Index>(i) * mk, mk) += qs[j](i) * ss[j];
    }
  }
  const Eigen::Index dims = static_cast<Eigen::Index>(mq) * mk;
  NormalEquations eq{MatrixD(dims, dims), std::move(b)};
  for (int i = 0; i < mq; ++i) {
    for (int j = 0; j < mq; ++j) {
      for (int p = 0; p < mk; ++p) {
        for (int r = 0; r < mk; ++r) {
          eq.a(static_cast<Eigen::Index>(i) * mk + p, static_cast<Eigen::Index>(j) * mk + r) =
              by_outer(static_cast<Eigen::Index>(i) * mq + j, static_cast<Eigen::Index>(p) * mk + r);
        }
      }
    }
  }
  return eq;
}

RecallCounts bilinear_recall(const std::vector<IndexerRequest>& data, const std::vector<Group>& groups,
                             const FeatureMap& queries, const std::vector<MatrixD>& keys, const MatrixD& w,
                             const std::vector<int>& ks, int threads) {
  std::vector<RecallCounts> per(groups.size(), RecallCounts(ks));
  const int mq = queries.dims() + 1;
  parallel_for(groups.size(), threads, [&](std::size_t j) {
    const IndexerGroup& group = data[groups[j].request].groups[groups[j].group];
    VectorD q(mq);
    q.head(mq - 1) = queries.apply(group.query);
    q(mq - 1) = 1.0;
    const VectorD direction = w.transpose() * q;  // mk
    Eigen::VectorXf scores(static_cast<Eigen::Index>(group.candidate_rows.size()));
    Eigen::VectorXf target(scores.size());
    for (std::size_t c = 0; c < group.candidate_rows.size(); ++c) {
      scores(static_cast<Eigen::Index>(c)) =
          static_cast<float>(keys[groups[j].request].row(group.candidate_rows[c]).dot(direction));
      target(static_cast<Eigen::Index>(c)) = group.target[c];
    }
    count_recall(scores, target, per[j]);
  });
  RecallCounts total(ks);
  for (const RecallCounts& c : per) total.merge(c);
  return total;
}

}  // namespace

std::vector<double> oracle_recalls(const std::vector<IndexerRequest>& data, const std::vector<std::size_t>& requests,
                                   const std::vector<int>& ks) {
  std::vector<double> hits(ks.size(), 0.0);
  double positives = 0;
  for (const std::size_t r : requests) {
    for (const IndexerGroup& group : data[r].groups) {
      const auto p =
          static_cast<double>(std::count_if(group.target.begin(), group.target.end(), [](float t) { return t > 0; }));
      positives += p;
      for (std::size_t i = 0; i < ks.size(); ++i) hits[i] += std::min(p, static_cast<double>(ks[i]));
    }
  }
  for (double& h : hits) h = positives > 0 ? h / positives : 0.0;
  return hits;
}

IndexerReferences indexer_references(const std::vector<IndexerRequest>& data, const IndexerSplit& split,
                                     const std::vector<int>& ks, const BilinearOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const int threads = resolve_threads(options.threads);
  const std::vector<Group> train = groups_of(data, split.train);
  const std::vector<Group> val = groups_of(data, split.val);
  if (train.empty() || val.empty()) {
    throw InputError("indexer references: the " + std::string(train.empty() ? "training" : "validation") +
                     " requests hold no refresh with a positive");
  }
  const std::size_t primary = static_cast<std::size_t>(std::find(ks.begin(), ks.end(), options.primary_k) - ks.begin());
  if (primary == ks.size()) throw UsageError("indexer references: primary_k is not one of the ks");

  // Feature maps from the training requests only.
  const Eigen::Index d_query = data[train.front().request].groups[train.front().group].query.size();
  MatrixD query_samples(static_cast<Eigen::Index>(train.size()), d_query);
  for (std::size_t j = 0; j < train.size(); ++j) {
    query_samples.row(static_cast<Eigen::Index>(j)) =
        data[train[j].request].groups[train[j].group].query.cast<double>().transpose();
  }
  Eigen::Index key_rows = 0;
  for (const std::size_t r : split.train) key_rows += data[r].key_features.rows();
  MatrixD key_samples(key_rows, data[0].key_features.cols());
  key_rows = 0;
  for (const std::size_t r : split.train) {
    key_samples.middleRows(key_rows, data[r].key_features.rows()) = data[r].key_features.cast<double>();
    key_rows += data[r].key_features.rows();
  }
  const FeatureMap query_map = fit_feature_map(query_samples, options.max_dims);
  const FeatureMap key_map = fit_feature_map(key_samples, options.max_dims);
  std::vector<MatrixD> keys(data.size());
  parallel_for(data.size(), threads, [&](std::size_t r) {
    const Eigen::MatrixXf& f = data[r].key_features;
    keys[r].resize(f.rows(), key_map.dims());
    for (Eigen::Index i = 0; i < f.rows(); ++i) keys[r].row(i) = key_map.apply(f.row(i).transpose()).transpose();
  });

  const NormalEquations eq = accumulate(data, train, query_map, keys, threads);
  const double scale = eq.a.trace() / static_cast<double>(eq.a.rows());
  IndexerReferences out;
  out.ks = ks;
  out.query_dims = query_map.dims();
  out.key_dims = key_map.dims();
  double best = -1;
  for (const double ridge : options.ridges) {
    MatrixD a = eq.a;
    a.diagonal().array() += ridge * scale;
    const VectorD w = a.llt().solve(eq.b);
    const MatrixD w_matrix = Eigen::Map<const RowMatrixD>(w.data(), query_map.dims() + 1, key_map.dims());
    const RecallCounts counts = bilinear_recall(data, val, query_map, keys, w_matrix, ks, threads);
    if (counts.recall(primary) > best) {
      best = counts.recall(primary);
      out.ridge = ridge;
      out.bilinear.clear();
      for (std::size_t i = 0; i < ks.size(); ++i) out.bilinear.push_back(counts.recall(i));
    }
  }
  out.oracle = oracle_recalls(data, split.val, ks);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace kvlab
