// What `kvlab trace info` prints and what `kvlab trace validate` checks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/geometry.hpp"
#include "traces/trace.hpp"

namespace kvlab {

/// A trace's root attributes and, per request, its header (id, prompt_tokens, decode_steps,
/// workload, seed, heads stored, dense/sparse, dtype, d_query, d_key).
struct TraceInfo {
  std::string path;
  int64_t file_bytes = 0;
  int version = kTraceVersion;
  Geometry geometry;
  std::vector<RequestHeader> requests;
};

/// Opens the file and reads headers only (fast: no mass is read).
[[nodiscard]] TraceInfo trace_info(const std::string& path);
/// Multi-line human-readable summary: root attributes, then one line per request.
[[nodiscard]] std::string format_trace_info(const TraceInfo& info);

struct ValidationSummary {
  int64_t requests = 0;
  int64_t steps = 0;
  int64_t stored_values = 0;  // mass values read (dense cells or sparse entries)
};

/// Reads every step of every request (mass, query and chunk features) and checks it as the
/// reader does, plus finite query and feature values. Returns the counts when everything is
/// valid; throws InputError describing the first problem otherwise.
ValidationSummary validate_trace(const std::string& path);

/// `kvlab trace validate FILE`: validates and prints one "OK ..." line to stdout; returns 0.
/// Problems propagate as InputError (the CLI prints the message and exits 1).
int validate_trace_command(const std::string& path);

}  // namespace kvlab
