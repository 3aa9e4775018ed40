// The wording families the task builders draw from (internal; tasks.hpp has the public
// TemplateSet). A family holds, per task kind, a list of interchangeable templates: haystack
// (filler) styles, needle sentences, key and value kinds, instructions and question /
// answer-prefix pairs. A sample picks one of each, seeded by its own seed, so a set of
// samples mixes them.
//
// Three families:
//   default  exactly one template of each: today's RULER-style prompts, byte for byte;
//   train    several of each, for recordings an indexer is trained on;
//   heldout  several of each, none of which is a train template (not one template string,
//            filler word bank, key or value kind in common), for evaluating on wording the
//            indexer never saw.
// template_strings() lists every string of a family, so a test can check that train and
// heldout share none.
//
// Template syntax: "{slot}" is replaced by a value; in a filler sentence a slot names one of
// the style's word banks ("{Slot}" capitalises the word drawn) or a number: {hh} 00-23,
// {mm} 00-59, {d} 1-9, {ms} 1-999, {n} 1-9999. Needle and question templates take {key},
// {keys}, {value}, {thing} and {things} (the value kind's noun, e.g. "number"/"numbers").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/random.hpp"
#include "traces/tasks/tasks.hpp"

namespace kvlab::task_detail {

/// One haystack style: sentence templates drawn at random (or, with `cycle`, taken in order
/// with no draws: the RULER noise passage) and the word banks their slots draw from.
struct FillerStyle {
  std::string_view name;
  std::vector<std::string_view> sentences;
  std::vector<std::pair<std::string_view, std::vector<std::string_view>>> banks;
  char separator = ' ';  // between sentences; '\n' for line-oriented styles (logs, lists)
  bool cycle = false;
};

/// How a needle task names what it hides ("quiet-harbor", "Marta Quill").
struct KeyKind {
  std::string_view name;
  std::string (*make)(Rng& rng);
};

/// What a needle task hides: "number" / "numbers" and how to draw one.
struct ValueKind {
  std::string_view name;
  std::string_view thing;
  std::string_view things;
  std::string (*make)(Rng& rng);
};

struct NiahWording {
  std::string_view name;
  std::string_view needle;  // {key} {value} {thing} {things}
};

/// The instruction before the haystack and the question after it with its answer prefix:
/// `one` asks for a key's single value (niah_single, niah_multikey), `all` for every value of
/// {keys} (niah_multivalue: one key; niah_multiquery: "a, b, and c").
struct NiahAsking {
  std::string_view name;
  std::string_view instruction;  // {thing} {things}
  std::string_view question_one;
  std::string_view prefix_one;
  std::string_view question_all;
  std::string_view prefix_all;
};

/// Variable tracking: the first assignment ({name} {value}), every later one ({name} {prev}).
struct VtStatements {
  std::string_view name;
  std::string_view assign_value;
  std::string_view assign_copy;
};

/// An instruction, question ({value} or {count}) and answer prefix of vt, cwe or fwe.
struct Asking {
  std::string_view name;
  std::string_view instruction;
  std::string_view question;
  std::string_view prefix;
};

/// How one entry of a cwe list ({n} {word}) or one fwe coded word ({word}) is written.
struct EntryFormat {
  std::string_view name;
  std::string_view entry;
};

struct TemplateFamily {
  TemplateSet set = TemplateSet::Default;
  std::vector<FillerStyle> fillers;  // niah and vt haystacks
  std::vector<KeyKind> keys;
  std::vector<ValueKind> values;
  std::vector<NiahWording> needles;
  std::vector<NiahAsking> niah_askings;
  std::vector<VtStatements> vt_statements;
  std::vector<Asking> vt_askings;
  std::vector<EntryFormat> cwe_entries;
  std::vector<Asking> cwe_askings;
  std::vector<EntryFormat> fwe_entries;
  std::vector<Asking> fwe_askings;
};

[[nodiscard]] const TemplateFamily& template_family(TemplateSet set);

/// Every template string of a family: filler sentences and bank words, key and value kind
/// names, needles, instructions, questions, prefixes and entry formats.
[[nodiscard]] std::vector<std::string> template_strings(const TemplateFamily& family);

/// `text` with each "{name}" of `slots` replaced by its value.
[[nodiscard]] std::string fill(std::string_view text,
                               const std::vector<std::pair<std::string_view, std::string>>& slots);

/// One sentence of a drawn (non-cycling) style: a template and its slots, drawn from `rng`.
[[nodiscard]] std::string filler_sentence(const FillerStyle& style, Rng& rng);

/// Picks one template of a family's list for a sample: `pick` advances once per list, in the
/// builder's fixed order, so a choice does not depend on the others' list lengths.
template <typename T>
const T& choose(const std::vector<T>& options, Rng& pick) {
  return options[pick.below(options.size())];
}

/// A sample's choices, as "filler=log,needle=memo,...", for TaskSample::template_variants.
class VariantLog {
 public:
  void add(std::string_view what, std::string_view name);
  [[nodiscard]] const std::string& text() const { return text_; }

 private:
  std::string text_;
};

}  // namespace kvlab::task_detail
