// Adam with decoupled weight decay (AdamW) and optional global-norm gradient clipping.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace kvlab {

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  ///< decoupled: p -= lr · weight_decay · p each step; 0 = off
  double grad_clip = 0.0;     ///< rescale the gradient to this global L2 norm if above; 0 = off

  /// Throws UsageError naming the first bad field.
  void validate() const;
};

class Adam {
 public:
  Adam(const AdamOptions& options, std::size_t num_parameters);

  /// One update. `params` are blocks laid end to end (e.g. a model's towers); `grad` holds
  /// the gradient for their concatenation. Returns the gradient's L2 norm before clipping.
  double step(const std::vector<std::span<float>>& params, std::span<const float> grad);

  void set_lr(double lr) { options_.lr = lr; }
  [[nodiscard]] const AdamOptions& options() const { return options_; }
  [[nodiscard]] int64_t steps() const { return steps_; }

 private:
  AdamOptions options_;
  std::vector<float> m_;
  std::vector<float> v_;
  int64_t steps_ = 0;
};

}  // namespace kvlab
