// Coalescing decode steps submitted by many threads into batches, for a decoder that computes
// many sequences in one forward pass (the GPU decoder, backends/cuda/model/cuda_decoder.hpp).
//
//   coalescer.join()               a thread that will submit steps (StepGroupMember)
//   coalescer.submit(key, input)   queue one step (one per key at a time)
//   coalescer.collect(key)         wait for it; the thread that finds every member waiting
//                                  runs one batch over everything queued, under the lock
//   coalescer.leave()
//
// A batch runs when every member thread is waiting in collect() (or has left), so a member
// that is still planning its next step is waited for and, when every thread submits all its
// steps before collecting any, a batch holds every step of that round. A thread that is not a
// member never holds a batch back: with no members, collect() runs the batch at once. Batches
// list their inputs in key order. What goes into a batch depends on timing when threads are
// not members; `run` must then compute each input independently of the others.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "backends/live/decoder.hpp"
#include "core/error.hpp"

namespace kvlab {

struct CoalescerCounts {
  int64_t batches = 0;
  int64_t steps = 0;  // inputs served, over all batches
  int max_batch = 0;
};

template <class Input, class Output>
class StepCoalescer final : public StepGroup {
 public:
  /// Computes one batch: an output per input, in order. Called with mutex() held.
  using RunBatch = std::function<std::vector<Output>(const std::vector<Input>&)>;

  explicit StepCoalescer(RunBatch run) : run_(std::move(run)) {}

  void join() override {
    const std::lock_guard lock(mutex_);
    members_.insert(std::this_thread::get_id());
  }

  void leave() override {
    const std::lock_guard lock(mutex_);
    const auto it = members_.find(std::this_thread::get_id());
    if (it != members_.end()) members_.erase(it);
    changed_.notify_all();  // the threads still waiting may now be everyone there is
  }

  void submit(int64_t key, Input input) {
    const std::lock_guard lock(mutex_);
    Queued q;
    q.input = std::move(input);
    if (!queued_.emplace(key, std::move(q)).second) {
      throw UsageError("step coalescer: sequence " + std::to_string(key) +
                       " submitted a step before collecting the last");
    }
  }

  /// Waits for the step queued under `key`; rethrows what its batch threw.
  Output collect(int64_t key) {
    std::unique_lock lock(mutex_);
    const auto it = queued_.find(key);
    if (it == queued_.end()) throw UsageError("step coalescer: collect() without a submitted step");
    Queued& queued = it->second;
    if (!queued.done && members_.count(std::this_thread::get_id()) > 0) {
      // Counted as waiting until the batch that serves this step has run (run_batch_locked
      // uncounts it then, not this thread once it wakes: a woken thread that has not run yet
      // must not count as waiting for the next batch).
      queued.member_waiting = true;
      ++waiting_members_;
    }
    while (!queued.done) {
      if (waiting_members_ == static_cast<int>(members_.size())) {
        run_batch_locked();
      } else {
        changed_.wait(lock);
      }
    }
    Queued q = std::move(queued);
    queued_.erase(it);
    if (q.error) std::rethrow_exception(q.error);
    return std::move(q.output);
  }

  /// Forgets a queued step that will never be collected (its sequence is going away).
  void withdraw(int64_t key) {
    const std::lock_guard lock(mutex_);
    queued_.erase(key);
  }

  [[nodiscard]] CoalescerCounts counts() const {
    const std::lock_guard lock(mutex_);
    return counts_;
  }

  /// Guards what `run` touches: hold it for any other use of that state.
  [[nodiscard]] std::mutex& mutex() const { return mutex_; }

 private:
  struct Queued {
    Input input;
    bool done = false;
    bool member_waiting = false;  // a member thread waits for it (counted in waiting_members_)
    Output output;
    std::exception_ptr error;
  };

  void run_batch_locked() {
    std::vector<Input> inputs;
    std::vector<Queued*> served;
    for (auto& [key, q] : queued_) {
      if (q.done) continue;
      inputs.push_back(q.input);
      served.push_back(&q);
    }
    if (inputs.empty()) return;
    try {
      std::vector<Output> outputs = run_(inputs);
      if (outputs.size() != inputs.size()) throw InputError("step coalescer: a batch returned the wrong output count");
      for (size_t i = 0; i < served.size(); ++i) served[i]->output = std::move(outputs[i]);
      counts_.batches += 1;
      counts_.steps += static_cast<int64_t>(served.size());
      counts_.max_batch = std::max(counts_.max_batch, static_cast<int>(served.size()));
    } catch (...) {
      for (Queued* q : served) q->error = std::current_exception();  // every step of it fails alike
    }
    for (Queued* q : served) {
      q->done = true;
      if (q->member_waiting) --waiting_members_;
      q->member_waiting = false;
    }
    changed_.notify_all();
  }

  RunBatch run_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::map<int64_t, Queued> queued_;  // ordered: a batch lists its inputs in key order
  std::unordered_multiset<std::thread::id> members_;
  int waiting_members_ = 0;
  CoalescerCounts counts_;
};

}  // namespace kvlab
