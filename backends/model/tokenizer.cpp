#include "backends/model/tokenizer.hpp"

#include <algorithm>
#include <array>
#include <queue>

#include "backends/model/unicode_tables.hpp"
#include "backends/model/utf8.hpp"
#include "core/error.hpp"

namespace kvlab {

namespace {

constexpr std::uint32_t kInvalidCp = 0xFFFFFFFFu;  // an invalid byte: classed as "other"

bool in_ranges(std::span<const unicode_tables::CodePointRange> ranges, std::uint32_t cp) {
  const auto it = std::upper_bound(ranges.begin(), ranges.end(), cp,
                                   [](std::uint32_t c, const auto& r) { return c < r.first; });
  return it != ranges.begin() && cp <= std::prev(it)->last;
}

bool is_letter(std::uint32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return cp != kInvalidCp && in_ranges(unicode_tables::letter_ranges(), cp);
}

bool is_number(std::uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return cp != kInvalidCp && in_ranges(unicode_tables::number_ranges(), cp);
}

// Unicode White_Space, which is what \s means in the reference regex engines.
bool is_space(std::uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool is_other(std::uint32_t cp) { return !is_space(cp) && !is_letter(cp) && !is_number(cp); }

// Code points of a string with their byte offsets (offsets has one extra entry: the end).
struct CodePoints {
  std::vector<std::uint32_t> cps;
  std::vector<std::size_t> offsets;
};

CodePoints decode_all(std::string_view s) {
  CodePoints r;
  std::size_t pos = 0;
  while (pos < s.size()) {
    const utf8::Step st = utf8::step(s, pos);
    r.offsets.push_back(pos);
    r.cps.push_back(st.valid ? st.cp : kInvalidCp);
    pos += st.length;
  }
  r.offsets.push_back(s.size());
  return r;
}

// The GPT-2 split regex, by hand, over one piece.
void split_gpt2(std::string_view text, std::vector<std::string_view>& out) {
  const CodePoints cp = decode_all(text);
  const std::size_t n = cp.cps.size();
  auto at = [&](std::size_t i) { return i < n ? cp.cps[i] : kInvalidCp; };
  auto run = [&](std::size_t i, bool (*pred)(std::uint32_t)) {
    while (i < n && pred(cp.cps[i])) ++i;
    return i;
  };
  std::size_t i = 0;
  while (i < n) {
    const std::uint32_t c = cp.cps[i];
    std::size_t end = i;
    if (c == '\'') {  // 's|'t|'re|'ve|'m|'ll|'d
      const std::uint32_t c1 = at(i + 1);
      const std::uint32_t c2 = at(i + 2);
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        end = i + 2;
      } else if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') ||
                 (c1 == 'l' && c2 == 'l')) {
        end = i + 3;
      }
    }
    if (end == i) {
      const std::size_t j = (c == ' ' && i + 1 < n) ? i + 1 : i;  // the optional leading space
      const std::uint32_t cj = cp.cps[j];
      if (is_letter(cj)) {
        end = run(j, is_letter);
      } else if (is_number(cj)) {
        end = run(j, is_number);
      } else if (is_other(cj)) {
        end = run(j, is_other);
      } else {
        // Whitespace: \s+(?!\S) leaves the last space to lead the next word; \s+ otherwise.
        const std::size_t ws_end = run(i, is_space);
        end = (ws_end < n && ws_end - i >= 2) ? ws_end - 1 : ws_end;
      }
    }
    out.push_back(text.substr(cp.offsets[i], cp.offsets[end] - cp.offsets[i]));
    i = end;
  }
}

// GPT-2's reversible byte -> printable code point map.
struct ByteMap {
  std::array<std::uint32_t, 256> to_cp{};
  std::unordered_map<std::uint32_t, std::uint8_t> to_byte;
  ByteMap() {
    std::uint32_t next = 256;
    for (std::uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_cp[b] = printable ? b : next++;
      to_byte.emplace(to_cp[b], static_cast<std::uint8_t>(b));
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

std::string byte_level(std::string_view bytes) {
  std::string out;
  for (const char ch : bytes) utf8::append(out, byte_map().to_cp[static_cast<unsigned char>(ch)]);
  return out;
}

PreTokenizer parse_pre(const GgufFile& file) {
  if (!file.has("tokenizer.ggml.pre")) return PreTokenizer::kGpt2;
  const std::string pre = file.get_string("tokenizer.ggml.pre");
  if (pre == "smollm") return PreTokenizer::kSmolLm;
  if (pre == "gpt2" || pre == "default") return PreTokenizer::kGpt2;
  throw InputError(file.path().string() + ": metadata 'tokenizer.ggml.pre' = '" + pre +
                   "' is not supported (need smollm or gpt2)");
}

}  // namespace

std::vector<std::string_view> pre_tokenize(std::string_view text, PreTokenizer pre) {
  std::vector<std::string_view> out;
  if (pre == PreTokenizer::kGpt2) {
    split_gpt2(text, out);
    return out;
  }
  // smollm: isolate every number code point, then apply the regex to what is between.
  std::size_t start = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const utf8::Step st = utf8::step(text, pos);
    if (st.valid && is_number(st.cp)) {
      if (pos > start) split_gpt2(text.substr(start, pos - start), out);
      out.push_back(text.substr(pos, st.length));
      start = pos + st.length;
    }
    pos += st.length;
  }
  if (start < text.size()) split_gpt2(text.substr(start), out);
  return out;
}

// ---- construction -----------------------------------------------------------------------

Tokenizer::Tokenizer(std::vector<std::string> tokens, const std::vector<std::string>& merges,
                     std::vector<std::int32_t> types, PreTokenizer pre, std::string source)
    : source_(std::move(source)), tokens_(std::move(tokens)), types_(std::move(types)), pre_(pre) {
  if (tokens_.empty()) throw InputError(source_ + ": the vocabulary is empty");
  if (tokens_.size() > 0x7FFFFFFFu) throw InputError(source_ + ": the vocabulary is too large");
  if (!types_.empty() && types_.size() != tokens_.size()) {
    throw InputError(source_ + ": " + std::to_string(types_.size()) + " token types for " +
                     std::to_string(tokens_.size()) + " tokens");
  }
  if (types_.empty()) types_.assign(tokens_.size(), static_cast<std::int32_t>(TokenType::kNormal));

  token_ids_.reserve(tokens_.size());
  for (std::size_t i = 0; i < tokens_.size(); ++i) {
    // Keep the first id of a duplicated string, as the reference vocab map does.
    token_ids_.emplace(tokens_[i], static_cast<std::int32_t>(i));
    const auto type = static_cast<TokenType>(types_[i]);
    if ((type == TokenType::kControl || type == TokenType::kUserDefined) && !tokens_[i].empty()) {
      specials_.push_back(static_cast<std::int32_t>(i));
    }
    if (type == TokenType::kUnknown && unk_id_ < 0) unk_id_ = static_cast<std::int32_t>(i);
  }
  std::stable_sort(specials_.begin(), specials_.end(), [&](std::int32_t a, std::int32_t b) {
    return tokens_[static_cast<std::size_t>(a)].size() > tokens_[static_cast<std::size_t>(b)].size();
  });

  for (int b = 0; b < 256; ++b) {
    byte_token_[b] = find_token(byte_level(std::string(1, static_cast<char>(b))));
  }

  merges_.reserve(merges.size());
  for (std::size_t r = 0; r < merges.size(); ++r) {
    const std::string& m = merges[r];
    const std::size_t space = m.find(' ');
    if (space == std::string::npos) {
      throw InputError(source_ + ": merge " + std::to_string(r) + " '" + m +
                       "' is not of the form 'left right'");
    }
    const std::string left = m.substr(0, space);
    const std::string right = m.substr(space + 1);
    const std::int32_t l = find_token(left);
    const std::int32_t rt = find_token(right);
    const std::int32_t result = find_token(left + right);
    if (l < 0 || rt < 0 || result < 0) {
      throw InputError(source_ + ": merge " + std::to_string(r) + " '" + m +
                       "' refers to a token that is not in the vocabulary");
    }
    const std::uint64_t key = (static_cast<std::uint64_t>(l) << 32) | static_cast<std::uint32_t>(rt);
    merges_.emplace(key, Merge{static_cast<std::int32_t>(r), result});  // first rank wins
  }
}

Tokenizer Tokenizer::from_gguf(const GgufFile& file) {
  const std::string path = file.path().string();
  const std::string model = file.get_string("tokenizer.ggml.model");
  if (model != "gpt2") {
    throw InputError(path + ": metadata 'tokenizer.ggml.model' = '" + model +
                     "' is not supported (need gpt2, byte-level BPE)");
  }
  std::vector<std::int32_t> types;
  if (file.has("tokenizer.ggml.token_type")) {
    for (const std::int64_t t : file.get_int_array("tokenizer.ggml.token_type")) {
      types.push_back(static_cast<std::int32_t>(t));
    }
  }
  Tokenizer tok(file.get_string_array("tokenizer.ggml.tokens"),
                file.get_string_array("tokenizer.ggml.merges"), std::move(types), parse_pre(file),
                path);
  auto id_of = [&](const char* key) -> std::int32_t {
    if (!file.has(key)) return -1;
    const std::uint64_t id = file.get_uint(key);
    if (id >= tok.tokens_.size()) {
      throw InputError(path + ": metadata '" + key + "' = " + std::to_string(id) +
                       " is outside the vocabulary");
    }
    return static_cast<std::int32_t>(id);
  };
  tok.bos_id_ = id_of("tokenizer.ggml.bos_token_id");
  tok.eos_id_ = id_of("tokenizer.ggml.eos_token_id");
  tok.pad_id_ = id_of("tokenizer.ggml.padding_token_id");
  return tok;
}

// ---- encoding ---------------------------------------------------------------------------

void Tokenizer::bpe(std::string_view piece, std::vector<std::int32_t>& out) const {
  // Symbols form a doubly linked list over the piece's bytes; merged symbols are killed.
  struct Symbol {
    std::int32_t id;
    std::int32_t prev;
    std::int32_t next;
  };
  std::vector<Symbol> sym;
  sym.reserve(piece.size());
  for (std::size_t i = 0; i < piece.size(); ++i) {
    std::int32_t id = byte_token_[static_cast<unsigned char>(piece[i])];
    if (id < 0) {
      if (unk_id_ < 0) continue;  // a vocabulary without this byte and no <unk>: drop it
      id = unk_id_;
    }
    const auto idx = static_cast<std::int32_t>(sym.size());
    sym.push_back({id, idx - 1, idx + 1});
  }
  if (sym.empty()) return;
  sym.back().next = -1;

  struct Candidate {
    std::int32_t rank;
    std::int32_t left;
    std::int32_t left_id;
    std::int32_t right_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto consider = [&](std::int32_t left) {
    if (left < 0) return;
    const std::int32_t right = sym[static_cast<std::size_t>(left)].next;
    if (right < 0) return;
    const std::int32_t a = sym[static_cast<std::size_t>(left)].id;
    const std::int32_t b = sym[static_cast<std::size_t>(right)].id;
    const auto it = merges_.find((static_cast<std::uint64_t>(a) << 32) | static_cast<std::uint32_t>(b));
    if (it != merges_.end()) queue.push({it->second.rank, left, a, b});
  };
  for (std::int32_t i = 0; i + 1 < static_cast<std::int32_t>(sym.size()); ++i) consider(i);

  std::vector<bool> dead(sym.size(), false);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = sym[static_cast<std::size_t>(c.left)];
    // Stale when either side has merged since: ids change on every merge.
    if (dead[static_cast<std::size_t>(c.left)] || left.id != c.left_id || left.next < 0) continue;
    Symbol& right = sym[static_cast<std::size_t>(left.next)];
    if (right.id != c.right_id) continue;
    const auto key = (static_cast<std::uint64_t>(c.left_id) << 32) | static_cast<std::uint32_t>(c.right_id);
    left.id = merges_.at(key).result;
    dead[static_cast<std::size_t>(left.next)] = true;
    left.next = right.next;
    if (right.next >= 0) sym[static_cast<std::size_t>(right.next)].prev = c.left;
    consider(left.prev);
    consider(c.left);
  }
  for (std::int32_t i = 0; i >= 0; i = sym[static_cast<std::size_t>(i)].next) {
    out.push_back(sym[static_cast<std::size_t>(i)].id);
  }
}

void Tokenizer::encode_plain(std::string_view text, std::vector<std::int32_t>& out) const {
  // No whole-piece vocabulary shortcut: the reference BPE always merges by rank.
  for (const std::string_view piece : pre_tokenize(text, pre_)) bpe(piece, out);
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  std::vector<std::int32_t> out;
  if (!parse_special || specials_.empty()) {
    encode_plain(text, out);
    return out;
  }
  std::size_t start = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::int32_t match = -1;
    for (const std::int32_t id : specials_) {  // longest first
      const std::string& s = tokens_[static_cast<std::size_t>(id)];
      if (text.compare(pos, s.size(), s) == 0) {
        match = id;
        break;
      }
    }
    if (match < 0) {
      ++pos;
      continue;
    }
    if (pos > start) encode_plain(text.substr(start, pos - start), out);
    out.push_back(match);
    pos += tokens_[static_cast<std::size_t>(match)].size();
    start = pos;
  }
  if (start < text.size()) encode_plain(text.substr(start), out);
  return out;
}

// ---- decoding ---------------------------------------------------------------------------

void Tokenizer::check_id(std::int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= tokens_.size()) {
    throw InputError(source_ + ": token id " + std::to_string(id) + " is outside the vocabulary (" +
                     std::to_string(tokens_.size()) + " tokens)");
  }
}

const std::string& Tokenizer::token_text(std::int32_t id) const {
  check_id(id);
  return tokens_[static_cast<std::size_t>(id)];
}

std::int32_t Tokenizer::find_token(std::string_view token) const {
  const auto it = token_ids_.find(std::string(token));
  return it == token_ids_.end() ? -1 : it->second;
}

bool Tokenizer::is_special(std::int32_t id) const {
  check_id(id);
  const auto type = static_cast<TokenType>(types_[static_cast<std::size_t>(id)]);
  return type == TokenType::kControl || type == TokenType::kUserDefined;
}

std::string Tokenizer::token_bytes(std::int32_t id) const {
  const std::string& text = token_text(id);
  if (is_special(id)) return text;
  std::string out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const utf8::Step st = utf8::step(text, pos);
    const auto it = st.valid ? byte_map().to_byte.find(st.cp) : byte_map().to_byte.end();
    if (it != byte_map().to_byte.end()) {
      out += static_cast<char>(it->second);
    } else {
      out.append(text, pos, st.length);  // outside the byte alphabet: keep as written
    }
    pos += st.length;
  }
  return out;
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (const std::int32_t id : ids) {
    if (skip_special && is_special(id)) continue;
    bytes += token_bytes(id);
  }
  return utf8::make_valid(bytes);
}

std::string Utf8StreamDecoder::push(std::string_view bytes) {
  pending_.append(bytes);
  std::string out;
  std::size_t pos = 0;
  while (pos < pending_.size()) {
    const utf8::Step st = utf8::step(pending_, pos);
    if (st.truncated) break;  // wait for the rest of this character
    if (st.valid) {
      out.append(pending_, pos, st.length);
    } else {
      utf8::append(out, 0xFFFD);
    }
    pos += st.length;
  }
  pending_.erase(0, pos);
  return out;
}

std::string Utf8StreamDecoder::flush() {
  std::string out = utf8::make_valid(pending_);
  pending_.clear();
  return out;
}

// ---- chat template ----------------------------------------------------------------------

std::string chat_prompt(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                        std::string_view default_system) {
  std::string out;
  if (!messages.empty() && messages.front().role != "system" && !default_system.empty()) {
    out += "<|im_start|>system\n";
    out += default_system;
    out += "<|im_end|>\n";
  }
  for (const ChatMessage& m : messages) {
    out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

}  // namespace kvlab
