// The replay backend: a recorded trace behind kvlab::Backend (open loop).
//
// Each session streams its request step by step through a TraceReader; memory is one step
// (plus the lookahead ring) whatever decode_steps is. Oracle policies get later steps through
// set_lookahead/lookahead, served from a ring buffer of steps read ahead of the current one.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "traces/trace.hpp"

namespace kvlab {

class ReplayBackend final : public Backend {
 public:
  /// Opens the trace and reads every request header. Throws InputError naming the file when it
  /// is not a valid trace, or when its requests mix aggregated and per-head storage (one
  /// backend has one row layout).
  explicit ReplayBackend(const std::string& trace_path);
  /// The same over a reader already open (e.g. TraceReader::open_image).
  explicit ReplayBackend(std::unique_ptr<TraceReader> reader);

  [[nodiscard]] const Geometry& geometry() const override { return reader_->geometry(); }
  [[nodiscard]] RowLayout rows() const override { return layout_; }
  [[nodiscard]] int64_t requests() const override { return reader_->request_count(); }
  [[nodiscard]] std::unique_ptr<RequestSession> open(int64_t index) override;
  [[nodiscard]] RequestInfo request_info(int64_t index) override {
    const RequestHeader& h = headers_.at(static_cast<size_t>(index));
    return RequestInfo{h.id, h.workload, h.prompt_tokens, h.decode_steps, h.seed};
  }
  [[nodiscard]] std::string describe() const override { return "replay:" + reader_->path(); }

  /// Request headers in request order (as TraceReader lists them).
  [[nodiscard]] const std::vector<RequestHeader>& headers() const { return headers_; }

 private:
  std::unique_ptr<TraceReader> reader_;
  std::vector<RequestHeader> headers_;
  RowLayout layout_;
};

}  // namespace kvlab
