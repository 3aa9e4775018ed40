#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <fstream>

#include "backends/model/llama_weights.hpp"
#include "backends/model/tokenizer.hpp"
#include "core/error.hpp"
#include "gguf_builder.hpp"

namespace kvlab {
namespace {

using Pieces = std::vector<std::string_view>;

// GPT-2's byte alphabet for one printable ASCII character is the character itself; space
// is "Ġ" (U+0120) and newline "Ċ" (U+010A).
std::vector<std::string> byte_vocab() {
  std::vector<std::string> v;
  for (int b = 0; b < 256; ++b) {
    std::uint32_t cp = static_cast<std::uint32_t>(b);
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    if (!printable) {
      int n = 0;
      for (int k = 0; k < b; ++k) {
        if (!((k >= '!' && k <= '~') || (k >= 0xA1 && k <= 0xAC) || k >= 0xAE)) ++n;
      }
      cp = 256 + static_cast<std::uint32_t>(n);
    }
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    v.push_back(s);
  }
  return v;
}

// Vocabulary: 256 bytes, then merged tokens, then one control token.
Tokenizer tiny(PreTokenizer pre = PreTokenizer::kSmolLm) {
  std::vector<std::string> tokens = byte_vocab();
  const std::vector<std::string> merges{"h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or",
                                        "Ġwor ld", "l d", "1 2", "a a"};
  for (const char* t : {"he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "Ġworld", "ld", "12", "aa"}) {
    tokens.push_back(t);
  }
  tokens.push_back("<|x|>");
  std::vector<std::int32_t> types(tokens.size(), 1);
  types.back() = 3;
  return Tokenizer(tokens, merges, types, pre, "tiny");
}

TEST(PreTokenize, Gpt2RegexCases) {
  const auto gpt2 = PreTokenizer::kGpt2;
  EXPECT_EQ(pre_tokenize("Hello world", gpt2), (Pieces{"Hello", " world"}));
  EXPECT_EQ(pre_tokenize("a  b", gpt2), (Pieces{"a", " ", " b"}));
  EXPECT_EQ(pre_tokenize("x   ", gpt2), (Pieces{"x", "   "}));
  EXPECT_EQ(pre_tokenize("I'm we'll", gpt2), (Pieces{"I", "'m", " we", "'ll"}));
  EXPECT_EQ(pre_tokenize("'Re 'x", gpt2), (Pieces{"'", "Re", " '", "x"}));
  EXPECT_EQ(pre_tokenize("a\n\nb", gpt2), (Pieces{"a", "\n", "\n", "b"}));
  EXPECT_EQ(pre_tokenize("3.14 pi", gpt2), (Pieces{"3", ".", "14", " pi"}));
  EXPECT_EQ(pre_tokenize("f(x)+=1;", gpt2), (Pieces{"f", "(", "x", ")+=", "1", ";"}));
  EXPECT_EQ(pre_tokenize("café Ñu", gpt2), (Pieces{"café", " Ñu"}));
  EXPECT_EQ(pre_tokenize(" \t x", gpt2), (Pieces{" \t", " x"}));
  EXPECT_TRUE(pre_tokenize("", gpt2).empty());
}

TEST(PreTokenize, SmolLmIsolatesEveryDigit) {
  const auto smol = PreTokenizer::kSmolLm;
  EXPECT_EQ(pre_tokenize("3.14", smol), (Pieces{"3", ".", "1", "4"}));
  EXPECT_EQ(pre_tokenize("year 2024!", smol), (Pieces{"year", " ", "2", "0", "2", "4", "!"}));
  EXPECT_EQ(pre_tokenize("x²½", smol), (Pieces{"x", "²", "½"}));  // \p{N} beyond ASCII
}

TEST(PreTokenize, InvalidUtf8IsKeptByteForByte) {
  const std::string bad = "a\xFF\xC3 b";
  std::string joined;
  for (const auto p : pre_tokenize(bad, PreTokenizer::kSmolLm)) joined += p;
  EXPECT_EQ(joined, bad);
}

TEST(Tokenizer, MergesByRank) {
  const Tokenizer t = tiny();
  const auto hello = t.find_token("hello");
  const auto world = t.find_token("Ġworld");
  ASSERT_GE(hello, 256);
  EXPECT_EQ(t.encode("hello world"), (std::vector<std::int32_t>{hello, world}));
  // "aaa": the one merge applies leftmost first -> "aa" + "a".
  EXPECT_EQ(t.encode("aaa"), (std::vector<std::int32_t>{t.find_token("aa"), 'a'}));
  // Digits are isolated before BPE, so the "1 2" merge never fires under smollm...
  EXPECT_EQ(t.encode("12"), (std::vector<std::int32_t>{'1', '2'}));
  // ...but does under plain gpt2.
  EXPECT_EQ(tiny(PreTokenizer::kGpt2).encode("12"), (std::vector<std::int32_t>{t.find_token("12")}));
  EXPECT_TRUE(t.encode("").empty());
}

TEST(Tokenizer, LowerRankWinsOverEarlierPosition) {
  std::vector<std::string> tokens = byte_vocab();
  tokens.push_back("bc");
  tokens.push_back("ab");
  const Tokenizer t(tokens, {"b c", "a b"}, {}, PreTokenizer::kGpt2);
  EXPECT_EQ(t.encode("abc"), (std::vector<std::int32_t>{'a', 256}));
}

TEST(Tokenizer, SpecialTokensAreAtomic) {
  const Tokenizer t = tiny();
  const std::int32_t x = t.vocab_size() - 1;
  EXPECT_TRUE(t.is_special(x));
  EXPECT_EQ(t.encode("a<|x|>b"), (std::vector<std::int32_t>{'a', x, 'b'}));
  const auto plain = t.encode("a<|x|>b", /*parse_special=*/false);
  EXPECT_EQ(plain.size(), 7U);
  EXPECT_EQ(t.decode(plain), "a<|x|>b");
  EXPECT_EQ(t.decode(t.encode("<|x|>hello")), "<|x|>hello");
  EXPECT_EQ(t.decode(t.encode("<|x|>hello"), /*skip_special=*/true), "hello");
}

TEST(Tokenizer, DecodeRoundTripsAndRepairsPartialUtf8) {
  const Tokenizer t = tiny();
  const std::string text = "hello world\n\tcafé 日本 😀";
  EXPECT_EQ(t.decode(t.encode(text)), text);
  const auto ids = t.encode("é");  // two byte tokens: C3 A9
  ASSERT_EQ(ids.size(), 2U);
  EXPECT_EQ(t.decode({ids.data(), 1}), "\xEF\xBF\xBD");  // lone lead byte -> U+FFFD
  EXPECT_EQ(t.token_bytes(ids[0]), "\xC3");
  EXPECT_EQ(t.decode(t.encode("\xFF")), "\xEF\xBF\xBD");
  EXPECT_THROW(t.decode(std::vector<std::int32_t>{t.vocab_size()}), InputError);

  Utf8StreamDecoder stream;
  EXPECT_EQ(stream.push(t.token_bytes(ids[0])), "");
  EXPECT_EQ(stream.push(t.token_bytes(ids[1])), "é");
  EXPECT_EQ(stream.push("a\xF0\x9F"), "a");
  EXPECT_EQ(stream.flush(), "\xEF\xBF\xBD");
}

TEST(Tokenizer, RejectsInconsistentVocab) {
  EXPECT_THROW(Tokenizer({}, {}, {}, PreTokenizer::kGpt2), InputError);
  EXPECT_THROW(Tokenizer(byte_vocab(), {"a q"}, {}, PreTokenizer::kGpt2), InputError);  // "aq" absent
  EXPECT_THROW(Tokenizer(byte_vocab(), {"ab"}, {}, PreTokenizer::kGpt2), InputError);
  EXPECT_THROW(Tokenizer(byte_vocab(), {}, {1, 1}, PreTokenizer::kGpt2), InputError);
}

TEST(Tokenizer, FromGgufChecksModelAndPre) {
  gguf_testing::GgufBuilder b;
  std::vector<std::string> tokens = byte_vocab();
  b.kv_string("tokenizer.ggml.model", "gpt2")
      .kv_string("tokenizer.ggml.pre", "qwen2")
      .kv_strings("tokenizer.ggml.tokens", tokens)
      .kv_strings("tokenizer.ggml.merges", {});
  gguf_testing::TempFile f(b.bytes());
  const GgufFile g = GgufFile::open(f.path());
  try {
    Tokenizer::from_gguf(g);
    FAIL() << "no throw";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'tokenizer.ggml.pre' = 'qwen2' is not supported"),
              std::string::npos)
        << e.what();
  }
}

TEST(ChatPrompt, MatchesSmolLm2Template) {
  EXPECT_EQ(chat_prompt({{"user", "Hi"}}, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(chat_prompt({{"user", "Hi"}}, true, ""),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(chat_prompt({{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}}, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello<|im_end|>\n");
}

// ---- against the reference tokenizer on the real vocabulary -----------------------------

TEST(TokenizerReal, MatchesReferenceOnCorpus) {
  const std::filesystem::path model = default_model_path();
  if (!std::filesystem::exists(model)) {
    GTEST_SKIP() << "model " << model << " absent; run scripts/fetch-model.sh (or set KVLAB_MODEL)";
  }
  const GgufFile g = GgufFile::open(model);
  const Tokenizer t = Tokenizer::from_gguf(g);
  EXPECT_EQ(t.pre_tokenizer(), PreTokenizer::kSmolLm);
  EXPECT_EQ(t.vocab_size(), 49152);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.token_text(1), "<|im_start|>");
  EXPECT_TRUE(t.is_special(1));

  const std::filesystem::path path =
      std::filesystem::path(__FILE__).parent_path() / "../../data/model/tokenizer_expected.json";
  std::ifstream in(path);
  ASSERT_TRUE(in) << path;
  const nlohmann::json expected = nlohmann::json::parse(in);
  std::size_t cases = 0, cases_ok = 0, ids_total = 0, ids_ok = 0;
  for (const auto& c : expected.at("cases")) {
    const std::string text = c.at("text");
    const auto want = c.at("ids").get<std::vector<std::int32_t>>();
    const auto got = t.encode(text);
    ++cases;
    ids_total += want.size();
    for (std::size_t k = 0; k < want.size() && k < got.size(); ++k) ids_ok += want[k] == got[k];
    if (got == want) {
      ++cases_ok;
    } else {
      ADD_FAILURE() << "case " << cases - 1 << " differs: " << text;
    }
    EXPECT_EQ(t.decode(got), c.at("decoded").get<std::string>()) << text;
  }
  std::printf("tokenizer vs reference: %zu/%zu cases, %zu/%zu ids\n", cases_ok, cases, ids_ok, ids_total);
  EXPECT_GT(cases, 30U);

  // The chat prompt tokenizes with its markers as single special tokens.
  const auto ids = t.encode(chat_prompt({{"user", "Hi"}}, true, ""));
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1);  // <|im_start|>
  EXPECT_EQ(t.decode(ids), chat_prompt({{"user", "Hi"}}, true, ""));
}

}  // namespace
}  // namespace kvlab
