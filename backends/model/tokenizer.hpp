// Byte-level BPE tokenizer (GPT-2 style) built from GGUF metadata.
//
// Lifecycle: Tokenizer::from_gguf(file) reads tokenizer.ggml.{model,pre,tokens,merges,
// token_type,bos/eos/padding ids}; the tokenizer is then immutable and thread-safe.
// encode(text):
//   1. (parse_special) special tokens (token type CONTROL or USER_DEFINED, e.g.
//      <|im_start|>) are matched atomically, leftmost-longest, before anything else;
//   2. pre-tokenizer "smollm": every \p{N} code point becomes its own piece, then the GPT-2
//      split regex  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      runs over each piece ("gpt2" skips the digit step);
//   3. each piece's bytes are mapped to GPT-2's byte-to-unicode alphabet and merged by BPE
//      rank (lowest rank first, leftmost on ties).
// decode(ids) reverses the byte mapping and repairs invalid or partial UTF-8 with U+FFFD;
// Utf8StreamDecoder is the streaming form that holds back a partial trailing character.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "backends/model/gguf.hpp"

namespace kvlab {

/// GGUF token types (tokenizer.ggml.token_type codes).
enum class TokenType : std::int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

/// Pre-tokenizers we implement (tokenizer.ggml.pre).
enum class PreTokenizer { kGpt2, kSmolLm };

/// Split `text` (no special tokens) into the pieces that BPE sees. Exposed for tests.
std::vector<std::string_view> pre_tokenize(std::string_view text, PreTokenizer pre);

class Tokenizer {
 public:
  /// Build from the GGUF metadata. Throws InputError naming the file and key.
  static Tokenizer from_gguf(const GgufFile& file);

  /// Build from parts. `tokens` are in the byte-level alphabet (" " is "Ġ"); `merges` are
  /// "left right" strings in rank order; `types` may be empty (all normal). Throws
  /// InputError (naming `source`) on inconsistent input.
  Tokenizer(std::vector<std::string> tokens, const std::vector<std::string>& merges,
            std::vector<std::int32_t> types, PreTokenizer pre, std::string source = "tokenizer");

  /// Token ids for `text`; empty when the text is empty. Invalid UTF-8 is tokenized byte
  /// by byte, never rejected.
  std::vector<std::int32_t> encode(std::string_view text, bool parse_special = true) const;
  /// Text of `ids`; invalid or partial UTF-8 becomes U+FFFD. Throws InputError for an id
  /// outside the vocabulary.
  std::string decode(std::span<const std::int32_t> ids, bool skip_special = false) const;
  /// Raw bytes of one token (a special token yields its literal text).
  std::string token_bytes(std::int32_t id) const;

  int vocab_size() const { return static_cast<int>(tokens_.size()); }
  /// Token string as stored (byte-level alphabet).
  const std::string& token_text(std::int32_t id) const;
  /// Id of a stored token string, or -1.
  std::int32_t find_token(std::string_view token) const;
  bool is_special(std::int32_t id) const;

  std::int32_t bos_id() const { return bos_id_; }
  std::int32_t eos_id() const { return eos_id_; }
  std::int32_t pad_id() const { return pad_id_; }
  PreTokenizer pre_tokenizer() const { return pre_; }

 private:
  void check_id(std::int32_t id) const;
  void bpe(std::string_view piece, std::vector<std::int32_t>& out) const;
  void encode_plain(std::string_view text, std::vector<std::int32_t>& out) const;

  struct Merge {
    std::int32_t rank;
    std::int32_t result;
  };

  std::string source_;
  std::vector<std::string> tokens_;
  std::vector<std::int32_t> types_;
  std::unordered_map<std::string, std::int32_t> token_ids_;
  std::unordered_map<std::uint64_t, Merge> merges_;  // key: left id << 32 | right id
  std::int32_t byte_token_[256];                     // id of each single byte, or -1
  std::vector<std::int32_t> specials_;               // ids matched atomically, longest first
  PreTokenizer pre_ = PreTokenizer::kSmolLm;
  std::int32_t bos_id_ = -1;
  std::int32_t eos_id_ = -1;
  std::int32_t pad_id_ = -1;
  std::int32_t unk_id_ = -1;
};

/// Incremental token-bytes to text: complete characters are returned as soon as they are
/// whole; a partial trailing sequence waits for the next push.
class Utf8StreamDecoder {
 public:
  std::string push(std::string_view bytes);
  /// Whatever is still held back, repaired with U+FFFD.
  std::string flush();

 private:
  std::string pending_;
};

/// One chat turn.
struct ChatMessage {
  std::string role;
  std::string content;
};

/// SmolLM2's chat template inserts this system turn when the first message is not one.
inline constexpr std::string_view kSmolLm2DefaultSystem =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// ChatML prompt as rendered by the SmolLM2 GGUF's tokenizer.chat_template:
///   [<|im_start|>system\n{default_system}<|im_end|>\n]   (if messages[0] is not system)
///   <|im_start|>{role}\n{content}<|im_end|>\n ...
///   <|im_start|>assistant\n                               (if add_generation_prompt)
/// Pass an empty `default_system` to leave the implicit system turn out.
std::string chat_prompt(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                        std::string_view default_system = kSmolLm2DefaultSystem);

}  // namespace kvlab
