#include "indexer/training/adam.hpp"

#include <cmath>
#include <string>

#include "core/error.hpp"

namespace kvlab {

void AdamOptions::validate() const {
  auto fail = [](const char* field, double value, const char* rule) {
    throw UsageError(std::string("adam: ") + field + " must be " + rule + ", got " + std::to_string(value));
  };
  if (!(lr > 0) || !std::isfinite(lr)) fail("lr", lr, "positive");
  if (!(beta1 >= 0 && beta1 < 1)) fail("beta1", beta1, "in [0, 1)");
  if (!(beta2 >= 0 && beta2 < 1)) fail("beta2", beta2, "in [0, 1)");
  if (!(eps > 0)) fail("eps", eps, "positive");
  if (!(weight_decay >= 0)) fail("weight_decay", weight_decay, ">= 0");
  if (!(grad_clip >= 0)) fail("grad_clip", grad_clip, ">= 0");
}

Adam::Adam(const AdamOptions& options, std::size_t num_parameters)
    : options_(options), m_(num_parameters, 0.0F), v_(num_parameters, 0.0F) {
  options_.validate();
}

double Adam::step(const std::vector<std::span<float>>& params, std::span<const float> grad) {
  std::size_t total = 0;
  for (const auto& block : params) total += block.size();
  if (total != m_.size() || grad.size() != m_.size()) {
    throw InputError("adam: got " + std::to_string(total) + " parameters and " + std::to_string(grad.size()) +
                     " gradients, expected " + std::to_string(m_.size()));
  }
  double norm_sq = 0.0;
  for (const float g : grad) norm_sq += static_cast<double>(g) * g;
  const double norm = std::sqrt(norm_sq);
  const double clip = options_.grad_clip > 0 && norm > options_.grad_clip ? options_.grad_clip / norm : 1.0;

  ++steps_;
  const double b1 = options_.beta1;
  const double b2 = options_.beta2;
  const auto t = static_cast<double>(steps_);
  // Bias corrections folded into the step size and epsilon.
  const double correction1 = 1.0 - std::pow(b1, t);
  const double correction2 = 1.0 - std::pow(b2, t);
  const auto step_size = static_cast<float>(options_.lr / correction1);
  const auto root2 = static_cast<float>(std::sqrt(correction2));
  const auto eps = static_cast<float>(options_.eps);
  const auto decay = static_cast<float>(options_.lr * options_.weight_decay);
  const auto fb1 = static_cast<float>(b1);
  const auto fb2 = static_cast<float>(b2);

  std::size_t i = 0;
  for (const auto& block : params) {
    for (float& p : block) {
      const auto g = static_cast<float>(grad[i] * clip);
      m_[i] = fb1 * m_[i] + (1.0F - fb1) * g;
      v_[i] = fb2 * v_[i] + (1.0F - fb2) * g * g;
      p -= decay * p;
      p -= step_size * m_[i] / (std::sqrt(v_[i]) / root2 + eps);
      ++i;
    }
  }
  return norm;
}

}  // namespace kvlab
