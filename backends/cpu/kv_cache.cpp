#include "backends/cpu/kv_cache.hpp"

#include <algorithm>
#include <string>

#include "core/error.hpp"

namespace kvlab {

namespace {

void require_positive(int value, const char* field) {
  if (value <= 0) {
    throw InputError(std::string("kv cache: ") + field + " must be positive, got " +
                     std::to_string(value));
  }
}

}  // namespace

PagedKvCache::PagedKvCache(KvCacheShape shape) : shape_(shape) {
  require_positive(shape.n_layers, "n_layers");
  require_positive(shape.n_kv_heads, "n_kv_heads");
  require_positive(shape.head_dim, "head_dim");
  require_positive(shape.chunk_tokens, "chunk_tokens");
  layers_.resize(static_cast<size_t>(shape.n_layers));
  tokens_.assign(static_cast<size_t>(shape.n_layers), 0);
}

PagedKvCache::PagedKvCache(const PagedKvCache& other)
    : shape_(other.shape_), layers_(other.layers_), tokens_(other.tokens_) {
  // Complete chunks are never written again; the partial newest chunk is, so it is copied.
  for (auto& chunks : layers_) {
    if (!chunks.empty() && chunks.back()->count < shape_.chunk_tokens) chunks.back() = clone(*chunks.back());
  }
}

PagedKvCache& PagedKvCache::operator=(const PagedKvCache& other) {
  if (this != &other) *this = PagedKvCache(other);
  return *this;
}

std::shared_ptr<PagedKvCache::Chunk> PagedKvCache::new_chunk() const {
  const size_t per_head = static_cast<size_t>(shape_.chunk_tokens) * shape_.head_dim;
  const size_t n = per_head * shape_.n_kv_heads;
  auto chunk = std::make_shared<Chunk>();
  // Zero-filled so that a partial chunk never exposes uninitialised floats to a reader that
  // ignores the count (e.g. a debugger dump or a sloppy test).
  chunk->k = std::make_unique<float[]>(n);
  chunk->v = std::make_unique<float[]>(n);
  chunk->k_sum.assign(static_cast<size_t>(shape_.n_kv_heads) * shape_.head_dim, 0.0F);
  chunk->v_sum.assign(chunk->k_sum.size(), 0.0F);
  chunk->repr_score.assign(static_cast<size_t>(shape_.n_kv_heads) * shape_.chunk_tokens, 0.0F);
  return chunk;
}

std::shared_ptr<PagedKvCache::Chunk> PagedKvCache::clone(const Chunk& src) const {
  const size_t n = static_cast<size_t>(shape_.chunk_tokens) * shape_.head_dim * shape_.n_kv_heads;
  auto c = new_chunk();
  std::copy(src.k.get(), src.k.get() + n, c->k.get());
  std::copy(src.v.get(), src.v.get() + n, c->v.get());
  c->k_sum = src.k_sum;
  c->v_sum = src.v_sum;
  c->repr_score = src.repr_score;
  c->count = src.count;
  return c;
}

void PagedKvCache::append(int layer, const float* k, const float* v) {
  auto& chunks = layers_[layer];
  if (chunks.empty() || chunks.back()->count == shape_.chunk_tokens) {
    chunks.push_back(new_chunk());
  }
  Chunk& chunk = *chunks.back();
  const int hd = shape_.head_dim;
  for (int h = 0; h < shape_.n_kv_heads; ++h) {
    const float* kh = k + static_cast<size_t>(h) * hd;
    const float* vh = v + static_cast<size_t>(h) * hd;
    float* kdst = chunk.k.get() + head_offset(h) + static_cast<size_t>(chunk.count) * hd;
    float* vdst = chunk.v.get() + head_offset(h) + static_cast<size_t>(chunk.count) * hd;
    std::copy(kh, kh + hd, kdst);
    std::copy(vh, vh + hd, vdst);
    float* ks = chunk.k_sum.data() + static_cast<size_t>(h) * hd;
    float* vs = chunk.v_sum.data() + static_cast<size_t>(h) * hd;
    for (int d = 0; d < hd; ++d) {
      ks[d] += kh[d];
      vs[d] += vh[d];
    }
  }
  ++chunk.count;
  ++tokens_[layer];
}

void PagedKvCache::score_representatives(int layer, int64_t position, const float* query) {
  const int ct = shape_.chunk_tokens;
  const int hd = shape_.head_dim;
  Chunk& chunk = *layers_[layer][static_cast<size_t>(position / ct)];
  const int own = static_cast<int>(position % ct);
  for (int h = 0; h < shape_.n_kv_heads; ++h) {
    const float* q = query + static_cast<size_t>(h) * hd;
    const float* keys = chunk.k.get() + head_offset(h);
    float* score = chunk.repr_score.data() + static_cast<size_t>(h) * ct;
    for (int i = 0; i < own; ++i) {
      float dot = 0.0F;
      for (int d = 0; d < hd; ++d) dot += q[d] * keys[static_cast<size_t>(i) * hd + d];
      score[i] += dot;
    }
  }
}

int64_t PagedKvCache::bytes() const {
  int64_t chunks = 0;
  for (const auto& layer : layers_) chunks += static_cast<int64_t>(layer.size());
  return chunks * 2 * shape_.n_kv_heads * shape_.chunk_tokens * shape_.head_dim *
         static_cast<int64_t>(sizeof(float));
}

void PagedKvCache::clear() {
  for (auto& layer : layers_) layer.clear();
  std::fill(tokens_.begin(), tokens_.end(), 0);
}

}  // namespace kvlab
