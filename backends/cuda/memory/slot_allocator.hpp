// Fixed-size slots of one allocation taken once (the HBM page pool, the pinned host tier):
// O(1) allocate and release through a free list, and occupancy counts. Host-side bookkeeping
// only; the memory itself is owned by DevicePagePool / PinnedHostTier (device_memory.hpp).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"

namespace kvlab::cuda {

/// A pool or mirror that cannot hold what was asked: the message names the pool, its size
/// and the request. Exit code 1 (bad run), like every InputError.
class CapacityError : public InputError {
 public:
  using InputError::InputError;
};

/// "256 KiB", "1.50 GiB": byte counts in error messages and notes.
[[nodiscard]] std::string format_bytes(int64_t bytes);

class SlotAllocator {
 public:
  /// `name` and `sizing` appear in the out-of-slots error, e.g. "HBM page pool" and
  /// "--hbm-pool-gb 4".
  SlotAllocator(int64_t slots, int64_t slot_bytes, std::string name, std::string sizing = {});

  /// Takes a free slot; throws CapacityError naming the pool size and `what` asked for it.
  [[nodiscard]] int32_t allocate(std::string_view what);
  /// Returns a slot; throws std::logic_error for a slot that is not in use (a bookkeeping bug).
  void release(int32_t slot);

  [[nodiscard]] int64_t capacity() const { return static_cast<int64_t>(in_use_.size()); }
  [[nodiscard]] int64_t used() const { return capacity() - static_cast<int64_t>(free_.size()); }
  [[nodiscard]] int64_t peak_used() const { return peak_used_; }
  [[nodiscard]] int64_t slot_bytes() const { return slot_bytes_; }
  [[nodiscard]] int64_t capacity_bytes() const { return capacity() * slot_bytes_; }
  [[nodiscard]] bool in_use(int32_t slot) const { return in_use_.at(static_cast<size_t>(slot)) != 0; }
  [[nodiscard]] const std::string& name() const { return name_; }

 private:
  std::vector<int32_t> free_;   // stack of free slots; the lowest index is handed out first
  std::vector<uint8_t> in_use_;
  int64_t slot_bytes_ = 0;
  int64_t peak_used_ = 0;
  std::string name_;
  std::string sizing_;
};

}  // namespace kvlab::cuda
