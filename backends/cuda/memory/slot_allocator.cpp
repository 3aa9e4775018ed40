#include "backends/cuda/memory/slot_allocator.hpp"

#include <cstdio>
#include <limits>
#include <stdexcept>

namespace kvlab::cuda {

std::string format_bytes(int64_t bytes) {
  constexpr double kKiB = 1024.0;
  char buf[64];
  const double b = static_cast<double>(bytes);
  if (bytes < 1024) {
    std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(bytes));
  } else if (b < kKiB * kKiB) {
    std::snprintf(buf, sizeof buf, "%.4g KiB", b / kKiB);
  } else if (b < kKiB * kKiB * kKiB) {
    std::snprintf(buf, sizeof buf, "%.4g MiB", b / (kKiB * kKiB));
  } else {
    std::snprintf(buf, sizeof buf, "%.4g GiB", b / (kKiB * kKiB * kKiB));
  }
  return buf;
}

SlotAllocator::SlotAllocator(int64_t slots, int64_t slot_bytes, std::string name, std::string sizing)
    : slot_bytes_(slot_bytes), name_(std::move(name)), sizing_(std::move(sizing)) {
  if (slots < 0 || slots > std::numeric_limits<int32_t>::max()) {
    throw CapacityError(name_ + ": " + std::to_string(slots) + " slots is out of range (at most 2^31 - 1)");
  }
  if (slot_bytes <= 0) throw CapacityError(name_ + ": slot size must be positive");
  in_use_.assign(static_cast<size_t>(slots), 0);
  free_.reserve(static_cast<size_t>(slots));
  for (int64_t s = slots - 1; s >= 0; --s) free_.push_back(static_cast<int32_t>(s));
}

int32_t SlotAllocator::allocate(std::string_view what) {
  if (free_.empty()) {
    throw CapacityError(name_ + " is full: all " + std::to_string(capacity()) + " pages of " +
                        format_bytes(slot_bytes_) + " (" + format_bytes(capacity_bytes()) + (sizing_.empty() ? "" : ", ") +
                        sizing_ + ") are in use; " + std::string(what) + " needs one more");
  }
  const int32_t slot = free_.back();
  free_.pop_back();
  in_use_[static_cast<size_t>(slot)] = 1;
  if (used() > peak_used_) peak_used_ = used();
  return slot;
}

void SlotAllocator::release(int32_t slot) {
  if (slot < 0 || slot >= capacity() || in_use_[static_cast<size_t>(slot)] == 0) {
    throw std::logic_error(name_ + ": release of slot " + std::to_string(slot) + ", which is not in use");
  }
  in_use_[static_cast<size_t>(slot)] = 0;
  free_.push_back(slot);
}

}  // namespace kvlab::cuda
