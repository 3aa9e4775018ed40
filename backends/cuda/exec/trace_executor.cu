#include "backends/cuda/exec/trace_executor.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <stdexcept>
#include <utility>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/exec/random_fill.hpp"
#include "backends/cuda/kernels/sparse_decode.hpp"
#include "backends/cuda/kernels/sparse_decode_plan.hpp"
#include "backends/cuda/memory/gather.hpp"
#include "backends/cuda/memory/prefetch.hpp"

namespace kvlab::cuda {

namespace {

/// Host RAM the mirror may pin when the caller gives no limit: what could be pinned on the
/// H200 host (about 96 GiB of its 128 GiB).
constexpr int64_t kDefaultHostLimit = int64_t{96} << 30;

float elapsed_ms(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  KVLAB_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  return ms;
}

/// Device buffer that grows (and never shrinks) between steps.
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  /// True when the buffer was reallocated (its content is lost).
  bool reserve(size_t need) {
    if (need <= bytes) return false;
    if (ptr != nullptr) KVLAB_CUDA_CHECK(cudaFree(ptr));
    bytes = std::max(need, bytes * 2);
    KVLAB_CUDA_CHECK(cudaMalloc(&ptr, bytes));
    return true;
  }
  ~DeviceBuffer() {
    if (ptr != nullptr) cudaFree(ptr);
  }
};

}  // namespace

int default_query_group(const Geometry& geometry) {
  if (geometry.model == "llama3-8b") return 4;
  if (geometry.model == "smollm2-135m") return 3;
  return 0;
}

struct GpuExecResources::Impl {
  cudaStream_t compute = nullptr;
  std::unique_ptr<DevicePagePool> pool;
  std::unique_ptr<PinnedHostTier> mirror;
  std::unique_ptr<PrefetchEngine> prefetch;
  std::unique_ptr<MirrorWriter> writer;
  std::unique_ptr<RandomWeightModel> model;
  /// One plan per launch slot (a layer, or slot 0 when one launch covers every layer), kept
  /// while the slot's page and summary counts stay the same: between refreshes they rarely
  /// change, and a new plan costs a host build plus a synchronising upload, which would
  /// leave the GPU idle between layers.
  struct CachedPlan {
    std::vector<int32_t> counts;  // the launch's page indptr, then its summary indptr
    std::unique_ptr<SparseDecodeWorkspace> workspace;
  };
  std::vector<CachedPlan> plans;
  int64_t plan_uploads = 0;
  DeviceBuffer q, out, summary_kv, launch_csr;
  cudaEvent_t step_begin = nullptr, step_end = nullptr;
  std::vector<cudaEvent_t> marks;  // begin/end pairs around attention and model launches

  ~Impl() {
    if (compute != nullptr) cudaStreamSynchronize(compute);
    prefetch.reset();
    writer.reset();
    model.reset();
    for (cudaEvent_t e : marks) cudaEventDestroy(e);
    if (step_begin != nullptr) cudaEventDestroy(step_begin);
    if (step_end != nullptr) cudaEventDestroy(step_end);
    if (compute != nullptr) cudaStreamDestroy(compute);
  }
};

GpuExecResources::GpuExecResources(const ExecOptions& options)
    : options_(options), shape_(PageShape::of(options.geometry, options.rows)), impl_(std::make_unique<Impl>()) {
  if (options_.query_group <= 0) throw std::invalid_argument("--execute cuda: query group must be positive");
  if (options_.replicas <= 0) throw std::invalid_argument("--batch must be positive");
  Impl& d = *impl_;
  int least = 0, greatest = 0;
  KVLAB_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  KVLAB_CUDA_CHECK(cudaStreamCreateWithPriority(&d.compute, cudaStreamNonBlocking, least));
  KVLAB_CUDA_CHECK(cudaEventCreate(&d.step_begin));
  KVLAB_CUDA_CHECK(cudaEventCreate(&d.step_end));
  // The mirror is sized, and checked against host RAM, before anything is allocated: the
  // pinned mirror of every chunk of every replica that might leave HBM.
  const int64_t chunks = options_.geometry.chunks_for(std::max<int64_t>(options_.max_tokens, 1));
  const int64_t mirror_pages =
      chunks * options_.rows.rows() * options_.replicas * std::max(1, options_.sessions);
  const int64_t host_limit = options_.host_limit_bytes > 0 ? options_.host_limit_bytes : kDefaultHostLimit;
  // Weights first: the pool takes a fraction of what is free after them.
  if (options_.model) {
    d.model = std::make_unique<RandomWeightModel>(*options_.model, options_.replicas, options_.seed, d.compute);
  }
  d.pool = std::make_unique<DevicePagePool>(shape_.page_bytes(), options_.pool);
  // Pages never hold zeros: every slot starts with random K/V, and recycled slots keep it.
  KVLAB_CUDA_CHECK(launch_fill_random_bf16(static_cast<uint16_t*>(d.pool->base()),
                                           d.pool->slots().capacity_bytes() / 2, options_.seed, d.compute));
  if (options_.mirror) {
    d.mirror = std::make_unique<PinnedHostTier>(mirror_pages, shape_.page_elems(), options_.mirror_spec, host_limit);
    d.prefetch = std::make_unique<PrefetchEngine>(*d.pool, *d.mirror);
    d.writer = std::make_unique<MirrorWriter>(*d.pool, *d.mirror, shape_);
  }
  // Queries: one per (replica, layer, KV head) row and query head, random, written once.
  const int64_t kernel_rows =
      int64_t{options_.replicas} * options_.geometry.n_layers * options_.geometry.n_kv_heads;
  const int64_t q_elems = kernel_rows * options_.query_group * options_.geometry.head_dim;
  d.q.reserve(static_cast<size_t>(q_elems) * 2);
  d.out.reserve(static_cast<size_t>(q_elems) * 2);
  launch_random_fill_bf16(static_cast<__nv_bfloat16*>(d.q.ptr), q_elems, options_.seed + 7, 1.0f, d.compute);
  KVLAB_CUDA_CHECK(cudaStreamSynchronize(d.compute));
}

GpuExecResources::~GpuExecResources() = default;

int64_t GpuExecResources::pool_capacity_bytes() const { return impl_->pool->slots().capacity_bytes(); }
int64_t GpuExecResources::mirror_capacity_bytes() const {
  return impl_->mirror ? impl_->mirror->slots().capacity_bytes() : 0;
}
double GpuExecResources::pin_seconds() const { return impl_->mirror ? impl_->mirror->pin_seconds() : 0.0; }
int64_t GpuExecResources::weights_bytes() const { return impl_->model ? impl_->model->device_bytes() : 0; }

// ---- one (request, policy) ------------------------------------------------------------

/// The step's page lists (page_lists.hpp) and their device copies, per executor: the copies
/// are refreshed by what changed since this executor's previous step.
struct TraceExecutor::Staging {
  IncrementalPageLists lists;
  bool full_rebuild = false;  // KVLAB_EXEC_PAGE_LISTS=full: the reference rebuild every step
  StepPageLists full;
  std::vector<const RequestPages*> books;
  DeviceBuffer small;      // page indptr, last page tokens, summary indptr
  DeviceBuffer pages;      // page indices
  DeviceBuffer summaries;  // summary counts
  std::map<std::pair<int, int64_t>, int> landings;  // (row, chunk) → replicas whose copy landed
};

namespace {

/// KVLAB_EXEC_PAGE_LISTS: `incremental` (the default) or `full` (rebuild every list at every
/// step, as before the incremental builder: for measuring the difference on the device).
bool full_rebuild_requested() {
  const char* env = std::getenv("KVLAB_EXEC_PAGE_LISTS");
  if (env == nullptr || *env == '\0' || std::string(env) == "incremental") return false;
  if (std::string(env) == "full") return true;
  throw std::invalid_argument("KVLAB_EXEC_PAGE_LISTS must be incremental or full, not '" + std::string(env) + "'");
}

}  // namespace

TraceExecutor::TraceExecutor(GpuExecResources& resources, int64_t prompt_tokens, int64_t request)
    : resources_(&resources), request_(request), staging_(std::make_unique<Staging>()), prompt_tokens_(prompt_tokens) {
  staging_->full_rebuild = full_rebuild_requested();
}

void TraceExecutor::create_replicas(const PageDeltas& first) {
  auto& d = resources_->impl();
  const ExecOptions& o = resources_->options();
  // The ledger starts with the whole prompt in HBM and the first plan evicts most of it. With
  // a mirror the prefill is streamed: the prompt goes to the host tier, and only what the
  // first plan keeps gets HBM pages (materialised in place), so a prompt larger than the pool
  // (a 1M-token context) still runs. Without a mirror nothing can leave to host, and the prompt
  // is placed in HBM.
  std::vector<RowChunk> keep;
  PageDeltas rest = first;
  if (d.mirror) {
    const int64_t prompt_chunks = o.geometry.chunks_for(prompt_tokens_);
    std::vector<ChunkMask> leaves(static_cast<size_t>(o.rows.rows()), ChunkMask(prompt_chunks));
    for (const auto* list : {&first.evicted_to_host, &first.dropped}) {
      for (const RowChunk& rc : *list) {
        if (rc.chunk < prompt_chunks) leaves[static_cast<size_t>(rc.row)].set(rc.chunk);
      }
    }
    for (int r = 0; r < o.rows.rows(); ++r) {
      for (int64_t c = 0; c < prompt_chunks; ++c) {
        if (!leaves[static_cast<size_t>(r)].test(c)) keep.push_back({r, c});
      }
    }
    std::erase_if(rest.evicted_to_host, [&](const RowChunk& rc) { return rc.chunk < prompt_chunks; });
  }
  for (int r = 0; r < o.replicas; ++r) {
    const int64_t name = request_ * o.replicas + r;
    if (d.mirror) {
      replicas_.push_back(std::make_unique<RequestPages>(d.pool->slots(), d.mirror->slots(), resources_->page_shape(),
                                                         o.rows, prompt_tokens_, name,
                                                         RequestPages::StreamedPrefill{}));
      // The mirror gets the prompt (random K/V from one pool page, quantised as the mirror
      // stores it), then the pages the first plan keeps are taken in HBM.
      d.writer->write(replicas_.back()->prompt_as_mirror_writes(0), d.compute);
      replicas_.back()->materialize(keep);
    } else {
      replicas_.push_back(std::make_unique<RequestPages>(d.pool->slots(), nullptr, resources_->page_shape(), o.rows,
                                                         prompt_tokens_, name));
    }
    const std::vector<FetchOrder> orders = replicas_.back()->apply(rest);
    if (d.writer) d.writer->write(replicas_.back()->appends(), d.compute);
    if (!orders.empty()) {
      open_link_span();
      d.prefetch->issue(orders, r);
      close_link_span();
      step_fetch_bytes_ += static_cast<int64_t>(orders.size()) * d.mirror->page_bytes();
    }
  }
  KVLAB_CUDA_CHECK(cudaStreamSynchronize(d.compute));
}

void TraceExecutor::open_link_span() {
  LinkSpan span{};
  KVLAB_CUDA_CHECK(cudaEventCreate(&span.begin));
  KVLAB_CUDA_CHECK(cudaEventCreate(&span.end));
  KVLAB_CUDA_CHECK(cudaEventRecord(span.begin, resources_->impl().prefetch->copy_stream()));
  link_spans_.push_back(span);
}

void TraceExecutor::close_link_span() {
  KVLAB_CUDA_CHECK(cudaEventRecord(link_spans_.back().end, resources_->impl().prefetch->copy_stream()));
}

/// Copy-stream time of the fetch spans that have completed (all of them when `wait`).
double TraceExecutor::collect_link_ms(bool wait) {
  double ms = 0;
  size_t done = 0;
  for (; done < link_spans_.size(); ++done) {
    LinkSpan& span = link_spans_[done];
    if (wait) {
      KVLAB_CUDA_CHECK(cudaEventSynchronize(span.end));
    } else {
      const cudaError_t q = cudaEventQuery(span.end);
      if (q == cudaErrorNotReady) break;
      KVLAB_CUDA_CHECK(q);
    }
    ms += elapsed_ms(span.begin, span.end);
    cudaEventDestroy(span.begin);
    cudaEventDestroy(span.end);
  }
  link_spans_.erase(link_spans_.begin(), link_spans_.begin() + static_cast<std::ptrdiff_t>(done));
  return ms;
}

TraceExecutor::~TraceExecutor() {
  auto& d = resources_->impl();
  for (LinkSpan& span : link_spans_) {
    cudaEventSynchronize(span.end);
    cudaEventDestroy(span.begin);
    cudaEventDestroy(span.end);
  }
  // Copies still on the link target pages this executor owns: let them finish first.
  if (d.prefetch) {
    d.prefetch->synchronize();
    (void)d.prefetch->poll_landed();
  }
  cudaStreamSynchronize(d.compute);
}

void TraceExecutor::launch(const PageDeltas& deltas, EvictTo evict_to) {
  auto& d = resources_->impl();
  if (evict_to == EvictTo::Host && !deltas.evicted_to_host.empty() && !d.mirror) {
    throw std::invalid_argument("--execute cuda: the policy evicts to host memory, but the run has no host mirror "
                                "(--mirror none)");
  }
  KVLAB_CUDA_CHECK(cudaEventRecord(d.step_begin, d.compute));
  step_fetch_bytes_ = 0;
  stall_ms_at_launch_ = d.prefetch ? d.prefetch->stall_ms() : 0.0;
  if (replicas_.empty()) {
    create_replicas(deltas);
    KVLAB_CUDA_CHECK(cudaEventRecord(d.step_begin, d.compute));  // prefill is not timed
    return;
  }
  // deltas.landed is filled only under modelled arrival (exec_backend's page_deltas), where the
  // executor lands nothing itself; under measured arrival it lands what its copies report
  // (land()). A chunk fetched in this very step and landed before its attention is still in
  // host memory only here: RequestPages::apply lands it after the fetch.
  // One mirror write per step for every replica's new tokens (each write waits for the
  // previous one's descriptors: one wait per step, not one per replica).
  std::vector<AppendOrder> appends;
  for (size_t r = 0; r < replicas_.size(); ++r) {
    const std::vector<FetchOrder> orders = replicas_[r]->apply(deltas);
    const auto& mine = replicas_[r]->appends();
    appends.insert(appends.end(), mine.begin(), mine.end());
    if (!orders.empty()) {
      open_link_span();
      d.prefetch->issue(orders, static_cast<int64_t>(r));
      close_link_span();
      step_fetch_bytes_ += static_cast<int64_t>(orders.size()) * d.mirror->page_bytes();
    }
  }
  if (d.writer) d.writer->write(appends, d.compute);
  if (!deltas.landed.empty() && d.prefetch) {
    // Modelled arrival declared these landed: attention may read them only after their copies,
    // this step's included (issued above).
    d.prefetch->wait_all(d.compute);
  }
}

std::vector<RowChunk> TraceExecutor::poll_landed() {
  auto& d = resources_->impl();
  std::vector<RowChunk> landed;
  if (!d.prefetch) return landed;
  const int replicas = static_cast<int>(replicas_.size());
  for (const IssuedFetch& f : d.prefetch->poll_landed()) {
    const auto key = std::make_pair(f.order.row, f.order.chunk);
    if (++staging_->landings[key] == replicas) {
      staging_->landings.erase(key);
      landed.push_back({f.order.row, f.order.chunk});
    }
  }
  return landed;
}

void TraceExecutor::land(const std::vector<RowChunk>& landed) {
  for (const RowChunk& rc : landed) {
    for (auto& pages : replicas_) {
      if (pages->state(rc.row, rc.chunk) == PageState::InFlight) pages->land(rc.row, rc.chunk);
    }
  }
}

PageListsView TraceExecutor::build_page_lists(int64_t n_tokens, const Residency& resident, const TierSpec& tiers) {
  const ExecOptions& o = resources_->options();
  Staging& s = *staging_;
  s.books.clear();
  for (const auto& pages : replicas_) s.books.push_back(pages.get());
  PageListInputs in;
  in.geometry = &o.geometry;
  in.rows = o.rows;
  in.replicas = s.books;
  in.virtual_pages_per_slot = resources_->page_shape().page_elems() / o.geometry.head_dim;
  in.n_tokens = n_tokens;
  in.resident = &resident;
  in.tiers = tiers;
  if (s.full_rebuild) {
    build_page_lists_full(in, s.full);
    return s.full.view();
  }
  return s.lists.build(in);
}

void TraceExecutor::upload_page_lists(const PageListsView& v) {
  auto& d = resources_->impl();
  Staging& s = *staging_;
  auto upload = [&](DeviceBuffer& buffer, size_t at, std::span<const int32_t> src) {
    if (!src.empty()) {
      KVLAB_CUDA_CHECK(cudaMemcpyAsync(static_cast<int32_t*>(buffer.ptr) + at, src.data(), src.size_bytes(),
                                       cudaMemcpyHostToDevice, d.compute));
    }
  };
  // The small arrays every step; of the entries, what changed since the previous upload
  // (everything after a rebuild or when the device buffer had to grow).
  s.small.reserve((v.page_indptr.size() + v.last_page_tokens.size() + v.summary_indptr.size()) * sizeof(int32_t));
  upload(s.small, 0, v.page_indptr);
  upload(s.small, v.page_indptr.size(), v.last_page_tokens);
  upload(s.small, v.page_indptr.size() + v.last_page_tokens.size(), v.summary_indptr);
  auto refresh = [&](DeviceBuffer& buffer, std::span<const int32_t> src, ChangedRange changed) {
    const bool grew = buffer.reserve(src.size_bytes());
    if (grew || s.full_rebuild) changed = {0, static_cast<int64_t>(src.size())};
    if (changed.empty()) return;
    upload(buffer, static_cast<size_t>(changed.begin),
           src.subspan(static_cast<size_t>(changed.begin), static_cast<size_t>(changed.end - changed.begin)));
  };
  refresh(s.pages, v.page_indices, s.lists.changed_pages());
  refresh(s.summaries, v.summary_counts, s.lists.changed_summaries());
}

StepTiming TraceExecutor::finish(int64_t n_tokens, const Residency& resident, const TierSpec& tiers) {
  auto& d = resources_->impl();
  const ExecOptions& o = resources_->options();
  const Geometry& g = o.geometry;
  const PageShape shape = resources_->page_shape();
  StepTiming timing;
  if (o.wait_for_fetches && d.prefetch) d.prefetch->wait_all(d.compute);
  const PageListsView s = build_page_lists(n_tokens, resident, tiers);
  upload_page_lists(s);
  const bool summaries = !s.summary_counts.empty();
  // The per-layer views point into the device copies.
  const Staging& staged = *staging_;
  const auto* dev_page_indptr = static_cast<const int32_t*>(staged.small.ptr);
  const int32_t* dev_last = dev_page_indptr + s.page_indptr.size();
  const int32_t* dev_summary_indptr = dev_last + s.last_page_tokens.size();
  const auto* dev_page_indices = static_cast<const int32_t*>(staged.pages.ptr);
  const auto* dev_summary_counts = static_cast<const int32_t*>(staged.summaries.ptr);
  if (summaries) {
    // Summary keys and values: random, one (K, V) pair per entry in CSR order.
    const size_t need = s.summary_counts.size() * static_cast<size_t>(g.head_dim) * 2 * 2;
    if (need > d.summary_kv.bytes) {
      d.summary_kv.reserve(need);
      launch_random_fill_bf16(static_cast<__nv_bfloat16*>(d.summary_kv.ptr),
                              static_cast<int64_t>(d.summary_kv.bytes / 2), o.seed + 11, 1.0f, d.compute);
    }
  }
  const auto* pool_base = static_cast<const __nv_bfloat16*>(d.pool->base());
  PagedKvPoolView pool{pool_base, pool_base + shape.page_elems() / 2, g.head_dim,
                       static_cast<int32_t>(shape.heads_in_row * g.head_dim), static_cast<int32_t>(g.chunk_tokens)};
  const int rows_per_layer = o.replicas * g.n_kv_heads;
  const int64_t row_q = int64_t{o.query_group} * g.head_dim;
  auto mark = [&](size_t i) -> cudaEvent_t {
    while (d.marks.size() <= i) {
      cudaEvent_t e;
      KVLAB_CUDA_CHECK(cudaEventCreate(&e));
      d.marks.push_back(e);
    }
    return d.marks[i];
  };
  size_t n_marks = 0;
  std::vector<std::pair<size_t, bool>> spans;  // (begin mark, is attention)
  auto plan_for = [&](size_t slot, const std::vector<int32_t>& indptr,
                      const std::vector<int32_t>& sindptr) -> const SparseDecodeWorkspace& {
    if (d.plans.size() <= slot) d.plans.resize(slot + 1);
    GpuExecResources::Impl::CachedPlan& cached = d.plans[slot];
    std::vector<int32_t> counts(indptr);
    counts.push_back(-1);  // separates the two lists (no count is negative)
    counts.insert(counts.end(), sindptr.begin(), sindptr.end());
    if (!cached.workspace || cached.counts != counts) {
      if (!cached.workspace) cached.workspace = std::make_unique<SparseDecodeWorkspace>();
      const SparseDecodePlan plan = plan_sparse_decode(indptr, sindptr, static_cast<int32_t>(g.chunk_tokens));
      cached.workspace->upload(plan, o.query_group, g.head_dim, d.compute);
      cached.counts = std::move(counts);
      ++d.plan_uploads;
    }
    return *cached.workspace;
  };
  auto attention_for = [&](int first_layer, int n_layers, __nv_bfloat16* out) {
    const int32_t layer_rows = rows_per_layer * n_layers;
    const size_t at = static_cast<size_t>(first_layer) * (rows_per_layer + 1);
    const int32_t* dev_indptr = dev_page_indptr + at;
    const int32_t* dev_sindptr = dev_summary_indptr + (summaries ? at : 0);
    std::vector<int32_t> indptr(s.page_indptr.begin() + static_cast<std::ptrdiff_t>(at),
                                s.page_indptr.begin() + static_cast<std::ptrdiff_t>(at + rows_per_layer + 1));
    std::vector<int32_t> sindptr;
    if (summaries) {
      sindptr.assign(s.summary_indptr.begin() + static_cast<std::ptrdiff_t>(at),
                     s.summary_indptr.begin() + static_cast<std::ptrdiff_t>(at + rows_per_layer + 1));
    }
    if (n_layers > 1) {
      // Layers back to back: each layer's indptr restarts at 0 in the staging arrays, so a
      // launch over several layers takes a cumulative copy (uploaded once per step).
      indptr.assign(1, 0);
      if (summaries) sindptr.assign(1, 0);
      for (int l = first_layer; l < first_layer + n_layers; ++l) {
        const size_t la = static_cast<size_t>(l) * (rows_per_layer + 1);
        const int32_t pb = indptr.back();
        for (int r = 1; r <= rows_per_layer; ++r) indptr.push_back(pb + s.page_indptr[la + r]);
        if (summaries) {
          const int32_t sb = sindptr.back();
          for (int r = 1; r <= rows_per_layer; ++r) sindptr.push_back(sb + s.summary_indptr[la + r]);
        }
      }
      d.launch_csr.reserve((indptr.size() + sindptr.size()) * sizeof(int32_t));
      auto* li = static_cast<int32_t*>(d.launch_csr.ptr);
      KVLAB_CUDA_CHECK(cudaMemcpyAsync(li, indptr.data(), indptr.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                       d.compute));
      if (summaries) {
        KVLAB_CUDA_CHECK(cudaMemcpyAsync(li + indptr.size(), sindptr.data(), sindptr.size() * sizeof(int32_t),
                                         cudaMemcpyHostToDevice, d.compute));
      }
      dev_indptr = li;
      dev_sindptr = li + indptr.size();
    }
    const SparseDecodeWorkspace& workspace = plan_for(static_cast<size_t>(first_layer), indptr, sindptr);
    SparseDecodeRowsView rows;
    rows.n_rows = layer_rows;
    rows.group = o.query_group;
    rows.head_dim = g.head_dim;
    rows.scale = 1.0f / std::sqrt(static_cast<float>(g.head_dim));
    rows.q = static_cast<const __nv_bfloat16*>(d.q.ptr) +
             static_cast<int64_t>(first_layer) * rows_per_layer * row_q;
    rows.q_row_stride = row_q;
    rows.page_indptr = dev_indptr;
    rows.page_indices = dev_page_indices + s.page_offset[first_layer];
    rows.last_page_tokens = dev_last + static_cast<int64_t>(first_layer) * rows_per_layer;
    if (summaries) {
      rows.summary_indptr = dev_sindptr;
      rows.summary_k = static_cast<const __nv_bfloat16*>(d.summary_kv.ptr) +
                       s.summary_offset[first_layer] * g.head_dim;
      rows.summary_v = rows.summary_k + static_cast<int64_t>(s.summary_counts.size()) * g.head_dim;
      rows.summary_counts = dev_summary_counts + s.summary_offset[first_layer];
    }
    SparseDecodeOutView outs;
    outs.out = out;
    outs.out_row_stride = row_q;
    const size_t begin = n_marks;
    KVLAB_CUDA_CHECK(cudaEventRecord(mark(n_marks++), d.compute));
    run_sparse_decode(pool, rows, outs, workspace.view(), d.compute);
    KVLAB_CUDA_CHECK(cudaEventRecord(mark(n_marks++), d.compute));
    spans.emplace_back(begin, true);
  };
  auto model_span = [&](auto&& fn) {
    const size_t begin = n_marks;
    KVLAB_CUDA_CHECK(cudaEventRecord(mark(n_marks++), d.compute));
    fn();
    KVLAB_CUDA_CHECK(cudaEventRecord(mark(n_marks++), d.compute));
    spans.emplace_back(begin, false);
  };
  if (d.model) {
    for (int l = 0; l < g.n_layers; ++l) {
      model_span([&] { d.model->pre_attention(l, o.replicas, d.compute); });
      attention_for(l, 1, static_cast<__nv_bfloat16*>(d.model->attention_output()));
      model_span([&] { d.model->post_attention(l, o.replicas, d.compute); });
    }
    model_span([&] { d.model->head(o.replicas, d.compute); });
  } else {
    attention_for(0, g.n_layers, static_cast<__nv_bfloat16*>(d.out.ptr));
  }
  KVLAB_CUDA_CHECK(cudaEventRecord(d.step_end, d.compute));
  KVLAB_CUDA_CHECK(cudaEventSynchronize(d.step_end));
  timing.step_ms = elapsed_ms(d.step_begin, d.step_end);
  for (const auto& [begin, is_attention] : spans) {
    const double ms = elapsed_ms(d.marks[begin], d.marks[begin + 1]);
    (is_attention ? timing.attention_ms : timing.model_ms) += ms;
  }
  timing.fetch_bytes = step_fetch_bytes_;
  timing.fetch_ms = collect_link_ms(/*wait=*/false);
  // The engine is shared by every executor: the step's stall is what accrued since launch().
  if (d.prefetch) timing.stall_ms = d.prefetch->stall_ms() - stall_ms_at_launch_;
  timing.attended_bytes = s.attended_tokens * shape.row_token_bytes;
  timing.pool_bytes = d.pool->slots().used() * d.pool->page_bytes();
  return timing;
}

}  // namespace kvlab::cuda
