// The default, train and heldout wording families (templates.hpp). Every sentence and word bank
// here was written for kvlab; none is taken from a corpus.
#include "traces/tasks/templates.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>

#include "core/error.hpp"
#include "traces/tasks/word_lists.hpp"

namespace kvlab::task_detail {

namespace {

// ---- key kinds -----------------------------------------------------------------------------

std::string adjective_noun_key(Rng& rng) { return task_words::key_word(rng); }

std::string person_key(Rng& rng) {
  static const std::vector<std::string_view> given = {"Marta",  "Oskar",  "Ingrid", "Tobias", "Leona",
                                                      "Viktor", "Selma",  "Rafael", "Noor",   "Hugo",
                                                      "Greta",  "Anselm", "Liesel", "Cyril",  "Maelle"};
  static const std::vector<std::string_view> family = {"Quill",    "Baxter",    "Lindqvist", "Moreau", "Okafor",
                                                       "Petrov",   "Sandoval",  "Whitcombe", "Achebe", "Nakamura",
                                                       "Fairbank", "Ostrowski", "Delacroix", "Marsh",  "Vance"};
  std::string key(given[rng.below(given.size())]);
  key += ' ';
  key += family[rng.below(family.size())];
  return key;
}

std::string place_key(Rng& rng) {
  static const std::vector<std::string_view> kind = {"Port", "Lake", "Mount", "Fort", "Cape", "Glen"};
  static const std::vector<std::string_view> name = {
      "Velmira",    "Osterhal",  "Brindlemoor", "Cassowen",  "Dunmere",   "Elsworth",  "Farrowdale", "Gildencroft",
      "Harrowgate", "Ivelbrook", "Jarnvik",     "Kestrelby", "Lowenmark", "Morrowind", "Nethercombe"};
  std::string key(kind[rng.below(kind.size())]);
  key += ' ';
  key += name[rng.below(name.size())];
  return key;
}

std::string codename_key(Rng& rng) {
  static const std::vector<std::string_view> name = {
      "Bluefinch", "Ironbark",  "Silverfern", "Nightjar",    "Stonewake", "Coppercrest", "Ashgrove",  "Windhollow",
      "Redthorn",  "Glasswing", "Duskmantle", "Brightwater", "Emberfall", "Frostpine",   "Goldenreed"};
  return "Operation " + std::string(name[rng.below(name.size())]);
}

// ---- value kinds ---------------------------------------------------------------------------

std::string seven_digit_value(Rng& rng) { return std::to_string(rng.between(1000000, 9999999)); }

std::string uuid_value(Rng& rng) {
  static constexpr std::string_view kHex = "0123456789abcdef";
  std::string v;
  for (int group : {8, 4, 4}) {
    if (!v.empty()) v += '-';
    for (int i = 0; i < group; ++i) v += kHex[rng.below(kHex.size())];
  }
  return v;
}

std::string six_digit_value(Rng& rng) { return std::to_string(rng.between(100000, 999999)); }

std::string serial_value(Rng& rng) {
  static constexpr std::string_view kLetters = "ABCDEFGHJKLMNPQRSTUVWXYZ";
  std::string v;
  v += kLetters[rng.below(kLetters.size())];
  v += kLetters[rng.below(kLetters.size())];
  v += '-';
  v += std::to_string(rng.between(10000, 99999));
  return v;
}

std::string password_value(Rng& rng) { return task_words::pseudo_word(rng, 4); }

// ---- the families --------------------------------------------------------------------------

TemplateFamily default_family() {
  TemplateFamily f;
  f.set = TemplateSet::Default;
  f.fillers = {
      {"ruler_noise",
       {"The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again."},
       {},
       ' ',
       true}};
  f.keys = {{"adjective_noun", adjective_noun_key}};
  f.values = {{"seven_digits", "number", "numbers", seven_digit_value}};
  f.needles = {{"ruler", "One of the special magic numbers for {key} is: {value}."}};
  f.niah_askings = {{"ruler",
                     "Some special magic numbers are hidden in the text below. Remember them: you will be asked about "
                     "them afterwards.",
                     "What is the special magic number for {key} mentioned in the provided text?",
                     "The special magic number for {key} mentioned in the provided text is",
                     "What are all the special magic numbers for {keys} mentioned in the provided text?",
                     "The special magic numbers for {keys} mentioned in the provided text are"}};
  f.vt_statements = {{"ruler", "VAR {name} = {value}.", "VAR {name} = VAR {prev}."}};
  f.vt_askings = {{"ruler",
                   "Keep track of the chain of variable assignments hidden in the text below; you will be asked about "
                   "it afterwards.",
                   "Find all variables that are assigned the value {value} in the text above, directly or through "
                   "other variables.",
                   "The variables that are assigned the value {value} are:"}};
  f.cwe_entries = {{"numbered", "{n}. {word}"}};
  f.cwe_askings = {{"ruler",
                    "Below is a numbered list of words. A few of the words appear many more times than the others; "
                    "keep count as you read.",
                    "What are the {count} most common words in the list above? Answer with the words only.",
                    "The {count} most common words in the list are:"}};
  f.fwe_entries = {{"plain", "{word}"}};
  f.fwe_askings = {{"ruler", "Read the coded text below and keep track of how often each coded word appears.",
                    "What are the {count} most frequently appearing coded words in the text above? Answer with the "
                    "words only.",
                    "The {count} most frequently appearing coded words are:"}};
  return f;
}

std::vector<FillerStyle> train_fillers() {
  FillerStyle essay{
      "essay",
      {"In many ways, {subject} has {adverb} {verb} {object}.",
       "Scholars often argue that {subject} {verb} {object} more than we admit.",
       "It is worth asking why {subject} still matters for {object}.",
       "One common view is that {subject} and {subject} are closely linked.",
       "Few people notice how {adverb} {subject} {verb} {object}.",
       "This essay considers {subject} from several angles.", "{Subject} deserves a closer look than it usually gets."},
      {{"subject",
        {"the history of farming", "modern architecture", "public libraries", "river trade", "early printing",
         "city planning", "seasonal migration", "folk music", "coastal fishing", "railway travel", "handwriting",
         "the postal service"}},
       {"verb", {"shaped", "changed", "influenced", "reflected", "challenged", "supported"}},
       {"object",
        {"daily life", "local economies", "the way people learn", "regional politics", "family traditions",
         "the growth of towns", "how news travels"}},
       {"adverb", {"slowly", "quietly", "profoundly", "unexpectedly", "gradually"}}}};
  FillerStyle log{
      "service_log",
      {"[{hh}:{mm}:{mm}] INFO {service}: processed {n} requests in {ms} ms.",
       "[{hh}:{mm}:{mm}] WARN {service}: retrying connection to {host} (attempt {d}).",
       "[{hh}:{mm}:{mm}] DEBUG {service}: cache {cache_op} for block {n}.",
       "[{hh}:{mm}:{mm}] INFO {service}: flushed {n} records to shard {d}.",
       "[{hh}:{mm}:{mm}] ERROR {service}: timeout after {ms} ms, falling back to replica {d}.",
       "[{hh}:{mm}:{mm}] INFO {service}: health check passed ({d} of {d} probes)."},
      {{"service", {"scheduler", "ingest-worker", "auth-proxy", "billing", "metrics-agent", "router", "backup-daemon"}},
       {"host", {"db-primary", "queue-02", "storage-east", "edge-cache", "api-gateway"}},
       {"cache_op", {"hit", "miss", "eviction", "refresh"}}},
      '\n'};
  FillerStyle story{
      "narrative",
      {"{Time}, {character} {action} {place}.", "Nobody knew why {character} kept returning to {place}.",
       "{Character} remembered an old story about {place} and smiled.",
       "The wind carried the smell of bread across {place}.", "{Time}, {character} and {character} met near {place}.",
       "For a long while {character} said nothing at all."},
      {{"time", {"at dawn", "later that evening", "by noon", "before the rain came", "on the third day"}},
       {"character",
        {"the old fisherman", "a young courier", "the baker's daughter", "a tired soldier", "the village teacher",
         "a wandering musician"}},
       {"action",
        {"walked slowly toward", "hurried past", "waited outside", "looked back at", "sang softly near",
         "searched all morning around"}},
       {"place",
        {"the harbour", "the market square", "the mill by the river", "a narrow alley", "the hill above town",
         "the empty station"}}}};
  FillerStyle stock{
      "inventory",
      {"- {n} {unit} of {item}, stored on shelf {shelf}{d}.", "- {Item}: {n} {unit} left, reorder when below {d}.",
       "- Checked {n} boxes of {item}; {d} were damaged.", "- Moved {item} from shelf {shelf}{d} to shelf {shelf}{d}."},
      {{"item", {"flour", "copper wire", "rope", "lamp oil", "nails", "canvas", "salt", "wool", "glass jars", "bolts"}},
       {"unit", {"kg", "crates", "rolls", "litres", "bundles"}},
       {"shelf", {"A", "B", "C", "D", "E"}}},
      '\n'};
  return {essay, log, story, stock};
}

std::vector<FillerStyle> heldout_fillers() {
  FillerStyle weather{"weather_report",
                      {"Forecasters expect {weather} over {region} through the weekend.",
                       "Temperatures across {region} should climb to about {d}{d} degrees by the afternoon.",
                       "Residents of {region} reported {weather} late on {day}.",
                       "Travel disruption is possible in {region} if {weather} persists.",
                       "A spokesperson for the weather service said conditions in {region} would ease by {day}.",
                       "{Weather} is also likely along the roads into {region}."},
                      {{"weather",
                        {"light drizzle", "scattered showers", "a strong westerly wind", "thick morning fog",
                         "clear skies", "heavy snowfall", "freezing rain"}},
                       {"region",
                        {"the northern valleys", "the coastal plain", "the eastern ridge", "the lake district",
                         "the southern farmland", "the river delta"}},
                       {"day", {"Monday", "Tuesday", "Thursday", "Friday", "Sunday"}}}};
  FillerStyle recipe{
      "recipe",
      {"Step {d}: {cook} the {ingredient} until it is {state}.", "Meanwhile, {cook} the {ingredient} in a {vessel}.",
       "Add a pinch of {spice} and stir for {d} minutes.",
       "Let the {ingredient} rest in the {vessel} for {d}{d} minutes.", "Taste, then season with {spice} if needed."},
      {{"cook", {"chop", "whisk", "simmer", "roast", "fold", "knead", "grate"}},
       {"ingredient", {"onions", "butter", "carrots", "dough", "lentils", "mushrooms", "cream", "potatoes"}},
       {"state", {"golden", "soft", "smooth", "fragrant", "tender"}},
       {"vessel", {"saucepan", "mixing bowl", "baking tray", "skillet", "clay pot"}},
       {"spice", {"nutmeg", "cumin", "paprika", "black pepper", "dried thyme"}}}};
  FillerStyle chat{"chat_transcript",
                   {"{speaker}: Did anyone check the {object} before the {event}?",
                    "{speaker}: I think we should move the {event} to {day}.",
                    "{speaker}: Sounds good to me, as long as {speaker} agrees.",
                    "{speaker}: Sorry, I was away. What did I miss about the {event}?",
                    "{speaker}: Let's keep this short, the {event} starts at {d} o'clock.",
                    "{speaker}: The {object} is fine, I looked at it this morning."},
                   {{"speaker", {"Alice", "Bram", "Chen", "Dana", "Emeka", "Farah"}},
                    {"object", {"projector", "budget sheet", "guest list", "printer", "booking"}},
                    {"event", {"workshop", "team lunch", "quarterly review", "site visit", "rehearsal"}},
                    {"day", {"Wednesday", "Saturday", "next week", "the morning"}}},
                   '\n'};
  FillerStyle spec{"spec_sheet",
                   {"{component}.{param}: {n} {unit}", "{component}.{param} (default): {ms} {unit}",
                    "# {component} settings reviewed, revision {d}", "{component}.enabled: {switch}"},
                   {{"component", {"valve", "pump", "sensor", "fan", "relay", "motor", "heater"}},
                    {"param", {"max_pressure", "idle_speed", "threshold", "duty_cycle", "warmup_delay", "min_voltage"}},
                    {"unit", {"kPa", "rpm", "ms", "percent", "V", "s"}},
                    {"switch", {"true", "false"}}},
                   '\n'};
  return {weather, recipe, chat, spec};
}

TemplateFamily train_family() {
  TemplateFamily f;
  f.set = TemplateSet::Train;
  f.fillers = train_fillers();
  f.keys = {{"adjective_noun", adjective_noun_key}, {"person", person_key}};
  f.values = {{"seven_digits", "number", "numbers", seven_digit_value},
              {"uuid", "identifier", "identifiers", uuid_value}};
  f.needles = {{"magic", "One of the special magic {things} for {key} is: {value}."},
               {"secret", "Remember this: the secret {thing} of {key} is {value}."},
               {"assigned", "{key} was assigned the {thing} {value}."},
               {"memo", "Memo: the {thing} for {key} is {value}, please keep it safe."}};
  f.niah_askings = {
      {"magic",
       "Some special magic {things} are hidden in the text below. Remember them: you will be asked about "
       "them afterwards.",
       "What is the special magic {thing} for {key} mentioned in the provided text?",
       "The special magic {thing} for {key} mentioned in the provided text is",
       "What are all the special magic {things} for {keys} mentioned in the provided text?",
       "The special magic {things} for {keys} mentioned in the provided text are"},
      {"belongs", "The following document contains a few important {things}. Read it carefully and memorise them.",
       "Which {thing} belongs to {key}?", "The {thing} that belongs to {key} is",
       "List every {thing} that belongs to {keys}.", "The {things} that belong to {keys} are"},
      {"associated", "Read the text below. Somewhere in it, {things} are attached to names; you will need them later.",
       "Tell me the {thing} associated with {key} in the text.", "The {thing} associated with {key} is",
       "Which {things} are associated with {keys} in the text?", "The {things} associated with {keys} are"}};
  f.vt_statements = {{"var", "VAR {name} = {value}.", "VAR {name} = VAR {prev}."},
                     {"let", "let {name} = {value};", "let {name} = {prev};"},
                     {"set", "Set {name} to {value}.", "Set {name} to the value of {prev}."}};
  f.vt_askings = {
      {"chain",
       "Keep track of the chain of variable assignments hidden in the text below; you will be asked "
       "about it afterwards.",
       "Find all variables that are assigned the value {value} in the text above, directly or through "
       "other variables.",
       "The variables that are assigned the value {value} are:"},
      {"copies", "The text below contains some variable assignments among unrelated sentences. Follow them.",
       "Which variables hold the value {value} at the end, counting copies of copies?",
       "The variables holding {value} are:"}};
  f.cwe_entries = {{"numbered", "{n}. {word}"}, {"item", "item {n}: {word}"}};
  f.cwe_askings = {{"common",
                    "Below is a numbered list of words. A few of the words appear many more times than the others; "
                    "keep count as you read.",
                    "What are the {count} most common words in the list above? Answer with the words only.",
                    "The {count} most common words in the list are:"},
                   {"often", "Here is a long list of words. Some of them repeat far more than the others.",
                    "Which {count} words occur most often in this list? Give only the words.",
                    "The {count} words that occur most often are:"}};
  f.fwe_entries = {{"plain", "{word}"}, {"semicolon", "{word};"}};
  f.fwe_askings = {
      {"coded", "Read the coded text below and keep track of how often each coded word appears.",
       "What are the {count} most frequently appearing coded words in the text above? Answer with the "
       "words only.",
       "The {count} most frequently appearing coded words are:"},
      {"code_words", "The text below is written in a made-up code. Some code words appear much more often than others.",
       "Which {count} code words occur most often in the text? Answer with the words only.",
       "The {count} code words that occur most often are:"}};
  return f;
}

TemplateFamily heldout_family() {
  TemplateFamily f;
  f.set = TemplateSet::Heldout;
  f.fillers = heldout_fillers();
  f.keys = {{"place", place_key}, {"codename", codename_key}};
  f.values = {{"six_digits", "code", "codes", six_digit_value},
              {"serial", "serial", "serials", serial_value},
              {"password", "password", "passwords", password_value}};
  f.needles = {{"registry", "According to the registry, {value} is the {thing} that belongs to {key}."},
               {"overheard", "Someone mentioned in passing that {key} uses {value} as its {thing}."},
               {"ledger", "In the ledger, next to {key}, a clerk wrote the {thing} {value}."},
               {"notice", "NOTICE - {key} -> {thing}: {value}"}};
  f.niah_askings = {
      {"goes_with",
       "Below is a long passage. A handful of {things} are mentioned along the way; pay attention to who each one "
       "belongs to.",
       "Quick question about the passage: what {thing} goes with {key}?", "The {thing} that goes with {key} is",
       "Quick question about the passage: which {things} go with {keys}?", "The {things} that go with {keys} are"},
      {"recall", "Study this material closely. Afterwards you will be quizzed on a detail buried inside it.",
       "Looking back at the excerpt, can you recall the {thing} of {key}?", "Sure. The {thing} of {key} was",
       "Looking back at the excerpt, can you recall every {thing} of {keys}?", "Sure. The {things} of {keys} were"},
      {"report",
       "What follows is an excerpt with some facts scattered through it. Watch for any {thing} tied to a name.",
       "From the material above, report the {thing} linked to {key}.", "Reported {thing} for {key}:",
       "From the material above, report all {things} linked to {keys}.", "Reported {things} for {keys}:"}};
  f.vt_statements = {
      {"walrus", "{name} := {value}.", "{name} := {prev}."},
      {"register", "The register {name} now holds {value}.", "The register {name} now holds whatever {prev} holds."},
      {"arrow", "{value} -> {name}.", "{prev} -> {name}."}};
  f.vt_askings = {
      {"end_up",
       "The passage below hides a sequence of assignments between short capitalised names. Follow them as "
       "you read.",
       "Which names end up holding {value}, either directly or by copying another name?", "Names holding {value}:"},
      {"trace", "Trace how a value is passed from name to name in the text that follows.",
       "List every name whose value is {value} once all the assignments above are followed.",
       "The names whose value is {value} are:"}};
  f.cwe_entries = {{"parenthesised", "({n}) {word}"}, {"tagged", "{word} [#{n}]"}};
  f.cwe_askings = {{"recur", "Below you will find a tally sheet of words. A small group of words keeps recurring.",
                    "Name the {count} words that recur most frequently in the tally, and nothing else.",
                    "The {count} most recurrent words are:"},
                   {"repeated", "Go through the following enumeration and notice which words keep showing up.",
                    "If you had to pick the {count} most repeated words above, which would they be?",
                    "The {count} most repeated words would be:"}};
  f.fwe_entries = {{"comma", "{word},"}, {"angled", "<{word}>"}};
  f.fwe_askings = {
      {"cipher", "What follows is gibberish produced by a cipher. Count the cipher words as you go.",
       "Which {count} cipher words turn up the most in the stream? Only list them.",
       "The {count} cipher words that turn up the most are:"},
      {"tokens", "Scan this stream of invented tokens and keep a rough tally of each one.",
       "Name the top {count} invented tokens by how often they appear.", "Top {count} invented tokens by frequency:"}};
  return f;
}

std::string two_digits(int64_t v) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%02lld", static_cast<long long>(v));
  return buf;
}

/// A numeric slot's value, or false when `slot` is not one.
bool number_slot(std::string_view slot, Rng& rng, std::string& out) {
  if (slot == "hh") {
    out = two_digits(rng.between(0, 23));
  } else if (slot == "mm") {
    out = two_digits(rng.between(0, 59));
  } else if (slot == "d") {
    out = std::to_string(rng.between(1, 9));
  } else if (slot == "ms") {
    out = std::to_string(rng.between(1, 999));
  } else if (slot == "n") {
    out = std::to_string(rng.between(1, 9999));
  } else {
    return false;
  }
  return true;
}

std::string bank_word(const FillerStyle& style, std::string_view slot, Rng& rng) {
  for (const auto& [name, words] : style.banks) {
    if (name == slot) return std::string(words[rng.below(words.size())]);
  }
  throw InputError("task templates: filler style " + std::string(style.name) + " has no word bank '" +
                   std::string(slot) + "'");
}

/// `text` with each "{slot}" replaced by value(slot), left to right (a filler sentence draws
/// its words in that order).
template <typename Value>
std::string expand_slots(std::string_view text, Value&& value) {
  std::string out;
  out.reserve(text.size() + 32);
  size_t at = 0;
  while (at < text.size()) {
    const size_t open = text.find('{', at);
    const size_t close = open == std::string_view::npos ? open : text.find('}', open);
    if (close == std::string_view::npos) break;
    out.append(text.substr(at, open - at));
    out += value(text.substr(open + 1, close - open - 1));
    at = close + 1;
  }
  out.append(text.substr(std::min(at, text.size())));
  return out;
}

}  // namespace

const TemplateFamily& template_family(TemplateSet set) {
  static const TemplateFamily defaults = default_family();
  static const TemplateFamily train = train_family();
  static const TemplateFamily heldout = heldout_family();
  switch (set) {
    case TemplateSet::Train:
      return train;
    case TemplateSet::Heldout:
      return heldout;
    case TemplateSet::Default:
      break;
  }
  return defaults;
}

std::vector<std::string> template_strings(const TemplateFamily& f) {
  std::vector<std::string> out;
  auto add = [&out](std::string_view s) { out.emplace_back(s); };
  for (const FillerStyle& s : f.fillers) {
    add(s.name);
    for (auto t : s.sentences) add(t);
    for (const auto& [slot, words] : s.banks) {
      for (auto w : words) add(w);
    }
  }
  for (const KeyKind& k : f.keys) add(k.name);
  for (const ValueKind& v : f.values) {
    add(v.name);
    add(v.thing);
    add(v.things);
  }
  for (const NiahWording& n : f.needles) add(n.needle);
  for (const NiahAsking& a : f.niah_askings) {
    for (auto t : {a.instruction, a.question_one, a.prefix_one, a.question_all, a.prefix_all}) add(t);
  }
  for (const VtStatements& v : f.vt_statements) {
    add(v.assign_value);
    add(v.assign_copy);
  }
  for (const auto* askings : {&f.vt_askings, &f.cwe_askings, &f.fwe_askings}) {
    for (const Asking& a : *askings) {
      for (auto t : {a.instruction, a.question, a.prefix}) add(t);
    }
  }
  for (const auto* entries : {&f.cwe_entries, &f.fwe_entries}) {
    for (const EntryFormat& e : *entries) add(e.entry);
  }
  return out;
}

std::string fill(std::string_view text, const std::vector<std::pair<std::string_view, std::string>>& slots) {
  return expand_slots(text, [&slots](std::string_view slot) {
    for (const auto& [name, value] : slots) {
      if (name == slot) return value;
    }
    return "{" + std::string(slot) + "}";  // not ours: kept as written
  });
}

std::string filler_sentence(const FillerStyle& style, Rng& rng) {
  return expand_slots(style.sentences[rng.below(style.sentences.size())], [&](std::string_view name) {
    std::string slot(name);
    const bool capital = !slot.empty() && std::isupper(static_cast<unsigned char>(slot[0]));
    if (capital) slot[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(slot[0])));
    std::string word;
    if (!number_slot(slot, rng, word)) word = bank_word(style, slot, rng);
    if (capital) word[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(word[0])));
    return word;
  });
}

void VariantLog::add(std::string_view what, std::string_view name) {
  if (!text_.empty()) text_ += ',';
  text_.append(what);
  text_ += '=';
  text_.append(name);
}

}  // namespace kvlab::task_detail
