#include "traces/validate.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "core/error.hpp"

namespace kvlab {

TraceInfo trace_info(const std::string& path) {
  auto reader = TraceReader::open(path);
  TraceInfo info;
  info.path = path;
  std::error_code ec;
  info.file_bytes = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  info.geometry = reader->geometry();
  for (int64_t i = 0; i < reader->request_count(); ++i) info.requests.push_back(reader->request(i)->header());
  return info;
}

std::string format_trace_info(const TraceInfo& info) {
  const Geometry& g = info.geometry;
  std::ostringstream out;
  out << "trace " << info.path << " (" << info.file_bytes << " bytes, kvlab_trace_version " << info.version << ")\n"
      << "model " << g.model << ": n_layers " << g.n_layers << ", n_kv_heads " << g.n_kv_heads << ", head_dim "
      << g.head_dim << ", kv_dtype_bytes " << g.kv_dtype_bytes << ", chunk_tokens " << g.chunk_tokens << "\n"
      << info.requests.size() << " requests\n";
  char line[512];
  // qk_dim: width of the query/key vectors (quest, infllm; 0 = none); prefill: the prefill
  // observation's window (snapkv family; 0 = none).
  std::snprintf(line, sizeof line, "%-24s %10s %10s %-16s %6s %-7s %-8s %8s %8s %7s %8s\n", "id", "prompt", "steps",
                "workload", "heads", "storage", "dtype", "d_query", "d_key", "qk_dim", "prefill");
  out << line;
  for (const RequestHeader& r : info.requests) {
    std::snprintf(line, sizeof line, "%-24s %10lld %10lld %-16s %6d %-7s %-8s %8lld %8lld %7lld %8lld\n", r.id.c_str(),
                  static_cast<long long>(r.prompt_tokens), static_cast<long long>(r.decode_steps), r.workload.c_str(),
                  r.heads_stored, r.sparse ? "sparse" : "dense",
                  r.mass_dtype == MassDtype::Float16 ? "float16" : "float32", static_cast<long long>(r.d_query),
                  static_cast<long long>(r.d_key), static_cast<long long>(r.qk_dim),
                  static_cast<long long>(r.prefill_window));
    out << line;
  }
  // d_query and d_key above are every feature layer's together.
  const std::vector<int>& first = info.requests.front().feature_layers;
  const bool same = std::all_of(info.requests.begin(), info.requests.end(),
                                [&](const RequestHeader& r) { return r.feature_layers == first; });
  if (!same) {
    out << "feature layers differ between requests (--json lists each)\n";
  } else if (!first.empty()) {
    out << "feature layers " << feature_layers_text(first) << " (d_query and d_key hold them side by side)\n";
  }
  return out.str();
}

ValidationSummary validate_trace(const std::string& path) {
  auto reader = TraceReader::open(path);
  ValidationSummary summary;
  StepMass mass;
  std::vector<float> features;
  for (int64_t i = 0; i < reader->request_count(); ++i) {
    auto request = reader->request(i);
    const RequestHeader& h = request->header();
    for (int64_t t = 0; t < h.decode_steps; ++t) {
      request->read_step(t, mass);
      summary.stored_values += mass.stored_values();
      if (h.d_query > 0) request->read_query(t, features);  // the reader checks the features are finite
    }
    if (h.d_key > 0) request->read_chunk_features(features);
    summary.steps += h.decode_steps;
    ++summary.requests;
  }
  return summary;
}

int validate_trace_command(const std::string& path) {
  const ValidationSummary s = validate_trace(path);
  std::cout << "OK " << path << ": " << s.requests << " requests, " << s.steps << " steps, " << s.stored_values
            << " mass values checked\n";
  return 0;
}

}  // namespace kvlab
