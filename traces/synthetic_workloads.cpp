// Workload names and which sub-workload each request of a mix gets.
#include "traces/synthetic_detail.hpp"

#include <array>
#include <string>

#include "core/error.hpp"

namespace kvlab {

using namespace synthetic_detail;

std::string_view workload_name(Workload w) {
  switch (w) {
    case Workload::Local: return "local";
    case Workload::Needle: return "needle";
    case Workload::MultiNeedle: return "multi_needle";
    case Workload::MultiHop: return "multi_hop";
    case Workload::Diffuse: return "diffuse";
    case Workload::Mix: return "mix";
  }
  return "?";
}

std::vector<std::string> workload_names() {
  return {"local", "needle", "multi_needle", "multi_hop", "diffuse", "mix"};
}

Workload parse_workload(std::string_view name) {
  for (Workload w : {Workload::Local, Workload::Needle, Workload::MultiNeedle, Workload::MultiHop,
                     Workload::Diffuse, Workload::Mix}) {
    if (workload_name(w) == name) return w;
  }
  std::string valid;
  for (const auto& n : workload_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw UsageError("--workload: unknown workload '" + std::string(name) + "' (valid: " + valid + ")");
}

Workload mix_workload_for(uint64_t seed, int request_index) {
  const auto block = static_cast<uint64_t>(request_index / 10);
  const auto remote_slot = static_cast<int>(derive(seed, 10, block) % 10);
  if (request_index % 10 != remote_slot) return Workload::Local;
  static constexpr std::array<Workload, 4> kRemote = {Workload::Needle, Workload::MultiNeedle,
                                                      Workload::MultiHop, Workload::Diffuse};
  return kRemote[derive(seed, 11, static_cast<uint64_t>(request_index)) % kRemote.size()];
}

}  // namespace kvlab
