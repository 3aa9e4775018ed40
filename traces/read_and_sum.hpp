// The "plain pass" the replay speed target is measured against.
#pragma once

#include <cstdint>
#include <string>

namespace kvlab {

/// Streams every step of every request exactly as the replay backend does (mass, and the query
/// when the request has one, through TraceReader) and returns the sum of all stored mass values
/// (plus listed remainders for sparse rows, so the result is about rows × steps).
/// `cells_out`, when not null, receives the number of stored values read.
double read_and_sum_pass(const std::string& path, int64_t* cells_out);

}  // namespace kvlab
