#include "traces/read_and_sum.hpp"

#include <vector>

#include "traces/trace.hpp"

namespace kvlab {

double read_and_sum_pass(const std::string& path, int64_t* cells_out) {
  auto reader = TraceReader::open(path);
  StepMass mass;
  std::vector<float> query;
  double total = 0;
  int64_t cells = 0;
  for (int64_t i = 0; i < reader->request_count(); ++i) {
    auto request = reader->request(i);
    const RequestHeader& h = request->header();
    for (int64_t t = 0; t < h.decode_steps; ++t) {
      request->read_step(t, mass);
      if (h.d_query > 0) request->read_query(t, query);
      for (int r = 0; r < mass.rows(); ++r) {
        const MassRow row = mass.row(r);
        for (float v : row.value) total += v;
        total += row.remainder;
      }
      cells += mass.stored_values();
    }
  }
  if (cells_out != nullptr) *cells_out = cells;
  return total;
}

}  // namespace kvlab
