#include "backends/model/llama_weights.hpp"

#include <cstdlib>
#include <limits>
#include <span>

#include "backends/model/dequant.hpp"
#include "core/error.hpp"

#ifndef KVLAB_SOURCE_DIR
#define KVLAB_SOURCE_DIR "."
#endif

namespace kvlab {

namespace {

std::string where(const GgufFile& file) { return file.path().string(); }

// A positive count that must fit in int (all our shapes are int-indexed).
int positive_int(const GgufFile& file, const std::string& key) {
  const std::uint64_t v = file.get_uint(key);
  if (v == 0 || v > static_cast<std::uint64_t>(std::numeric_limits<int>::max())) {
    throw InputError(where(file) + ": metadata '" + key + "' = " + std::to_string(v) +
                     " is out of range (need 1.." +
                     std::to_string(std::numeric_limits<int>::max()) + ")");
  }
  return static_cast<int>(v);
}

int optional_token_id(const GgufFile& file, const std::string& key, int vocab) {
  if (!file.has(key)) return -1;
  const std::uint64_t id = file.get_uint(key);
  if (id >= static_cast<std::uint64_t>(vocab)) {
    throw InputError(where(file) + ": metadata '" + key + "' = " + std::to_string(id) +
                     " is not below the vocabulary size " + std::to_string(vocab));
  }
  return static_cast<int>(id);
}

std::string dims_text(const std::vector<std::uint64_t>& dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// Checks that `name` exists with exactly `dims` (fastest-first) and a supported type.
const GgufTensorInfo& checked_tensor(const GgufFile& file, const std::string& name,
                                     const std::vector<std::uint64_t>& dims) {
  const GgufTensorInfo& t = file.tensor(name);
  if (t.dims != dims) {
    throw InputError(where(file) + ": tensor '" + name + "' has dims " + dims_text(t.dims) +
                     ", expected " + dims_text(dims));
  }
  if (!can_dequantize(t.type)) {
    throw InputError(where(file) + ": tensor '" + name + "': type " + ggml_type_name(t.type) +
                     " is not supported for dequantisation (supported: F32, F16, Q8_0, Q4_0, "
                     "Q4_1)");
  }
  return t;
}

RowMatrix load_matrix(const GgufFile& file, const std::string& name, int rows, int cols) {
  const GgufTensorInfo& t = checked_tensor(
      file, name, {static_cast<std::uint64_t>(cols), static_cast<std::uint64_t>(rows)});
  RowMatrix m(rows, cols);
  dequantize_rows(t, 0, std::span<float>(m.data(), static_cast<std::size_t>(m.size())));
  return m;
}

Vector load_vector(const GgufFile& file, const std::string& name, int n) {
  const GgufTensorInfo& t = checked_tensor(file, name, {static_cast<std::uint64_t>(n)});
  Vector v(n);
  dequantize_rows(t, 0, std::span<float>(v.data(), static_cast<std::size_t>(v.size())));
  return v;
}

}  // namespace

LlamaConfig read_llama_config(const GgufFile& file) {
  LlamaConfig c;
  c.architecture = file.get_string("general.architecture");
  if (c.architecture != "llama") {
    throw InputError(where(file) + ": architecture '" + c.architecture +
                     "' is not supported (need llama)");
  }
  if (file.has("general.name")) c.name = file.get_string("general.name");
  const std::string a = "llama.";
  c.n_layers = positive_int(file, a + "block_count");
  c.hidden = positive_int(file, a + "embedding_length");
  c.n_heads = positive_int(file, a + "attention.head_count");
  c.n_kv_heads = file.has(a + "attention.head_count_kv")
                     ? positive_int(file, a + "attention.head_count_kv")
                     : c.n_heads;
  c.ffn = positive_int(file, a + "feed_forward_length");
  c.context_length = positive_int(file, a + "context_length");
  c.rms_eps = static_cast<float>(file.get_float(a + "attention.layer_norm_rms_epsilon"));
  c.rope_base = file.has(a + "rope.freq_base")
                    ? static_cast<float>(file.get_float(a + "rope.freq_base"))
                    : 10000.0F;  // LLaMA's default when the converter omits it
  if (!(c.rms_eps > 0.0F) || !(c.rope_base > 0.0F)) {
    throw InputError(where(file) + ": rms epsilon and rope base must be positive");
  }

  if (file.has(a + "attention.key_length")) {
    c.head_dim = positive_int(file, a + "attention.key_length");
  } else {
    if (c.hidden % c.n_heads != 0) {
      throw InputError(where(file) + ": embedding_length " + std::to_string(c.hidden) +
                       " is not a multiple of head_count " + std::to_string(c.n_heads));
    }
    c.head_dim = c.hidden / c.n_heads;
  }
  if (c.head_dim % 2 != 0) {
    throw InputError(where(file) + ": head dim " + std::to_string(c.head_dim) +
                     " is odd; rotary embedding needs pairs");
  }
  if (file.has(a + "rope.dimension_count") &&
      file.get_uint(a + "rope.dimension_count") != static_cast<std::uint64_t>(c.head_dim)) {
    throw InputError(where(file) + ": metadata 'llama.rope.dimension_count' differs from the "
                     "head dim " + std::to_string(c.head_dim) + " (partial rotary is not supported)");
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    throw InputError(where(file) + ": head_count " + std::to_string(c.n_heads) +
                     " is not a multiple of head_count_kv " + std::to_string(c.n_kv_heads));
  }

  if (file.has(a + "vocab_size")) {
    c.vocab = positive_int(file, a + "vocab_size");
  } else {
    const GgufTensorInfo& embd = file.tensor("token_embd.weight");
    if (embd.dims.size() != 2 || embd.dims[1] == 0 ||
        embd.dims[1] > static_cast<std::uint64_t>(std::numeric_limits<int>::max())) {
      throw InputError(where(file) + ": tensor 'token_embd.weight' has dims " +
                       dims_text(embd.dims) + ", expected [hidden, vocab]");
    }
    c.vocab = static_cast<int>(embd.dims[1]);
  }
  c.bos_id = optional_token_id(file, "tokenizer.ggml.bos_token_id", c.vocab);
  c.eos_id = optional_token_id(file, "tokenizer.ggml.eos_token_id", c.vocab);
  c.pad_id = optional_token_id(file, "tokenizer.ggml.padding_token_id", c.vocab);
  return c;
}

LlamaWeights load_llama(const GgufFile& file) {
  LlamaWeights w;
  w.config = read_llama_config(file);
  const LlamaConfig& c = w.config;
  const int q_rows = c.n_heads * c.head_dim;
  const int kv_rows = c.n_kv_heads * c.head_dim;

  w.token_embd = load_matrix(file, "token_embd.weight", c.vocab, c.hidden);
  w.output_norm = load_vector(file, "output_norm.weight", c.hidden);
  w.tied_embeddings = file.find_tensor("output.weight") == nullptr;
  if (!w.tied_embeddings) w.output = load_matrix(file, "output.weight", c.vocab, c.hidden);
  w.rope_pairs_adjacent = true;

  w.layers.resize(static_cast<std::size_t>(c.n_layers));
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    LlamaLayerWeights& l = w.layers[static_cast<std::size_t>(i)];
    l.attn_norm = load_vector(file, p + "attn_norm.weight", c.hidden);
    l.wq = load_matrix(file, p + "attn_q.weight", q_rows, c.hidden);
    l.wk = load_matrix(file, p + "attn_k.weight", kv_rows, c.hidden);
    l.wv = load_matrix(file, p + "attn_v.weight", kv_rows, c.hidden);
    l.wo = load_matrix(file, p + "attn_output.weight", c.hidden, q_rows);
    l.ffn_norm = load_vector(file, p + "ffn_norm.weight", c.hidden);
    l.w_gate = load_matrix(file, p + "ffn_gate.weight", c.ffn, c.hidden);
    l.w_up = load_matrix(file, p + "ffn_up.weight", c.ffn, c.hidden);
    l.w_down = load_matrix(file, p + "ffn_down.weight", c.hidden, c.ffn);
  }
  return w;
}

GgufFile open_model_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    throw InputError("model file " + path.string() +
                     " not found; fetch it with scripts/fetch-model.sh (make model)");
  }
  return GgufFile::open(path);
}

std::filesystem::path default_model_path() {
  if (const char* env = std::getenv("KVLAB_MODEL"); env != nullptr && *env != '\0') {
    return env;
  }
  return std::filesystem::path(KVLAB_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

}  // namespace kvlab
