// Opening a trace from an in-memory copy of its file's bytes (HDF5's core driver), for the
// trace-reader fuzz target: the same checks as TraceReader::open, without a file.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "traces/trace.hpp"

namespace kvlab {

/// `name` is used in messages in place of a path. Throws InputError as TraceReader::open does.
std::unique_ptr<TraceReader> open_trace_image(const std::string& name, const void* data, std::size_t size);

}  // namespace kvlab
