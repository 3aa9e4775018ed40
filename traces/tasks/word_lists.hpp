// Word material for the tasks: key words for the needle tasks, an English word list for
// common-words extraction, and pronounceable made-up words where a task needs more distinct
// words than the list holds (or, for frequent-words extraction, "coded" words by design).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "core/random.hpp"

namespace kvlab::task_words {

[[nodiscard]] const std::vector<std::string_view>& adjectives();
[[nodiscard]] const std::vector<std::string_view>& nouns();
/// Everyday English nouns of 5 to 8 letters, distinct (so few are parts of other words).
[[nodiscard]] const std::vector<std::string_view>& common_words();

/// A "adjective-noun" key such as "quiet-harbor".
[[nodiscard]] std::string key_word(Rng& rng);

/// A made-up word of `syllables` consonant-vowel syllables ("bakoli").
[[nodiscard]] std::string pseudo_word(Rng& rng, int syllables);

/// `count` distinct made-up words none of which is in `taken`; they are added to `taken`.
/// Drawn in sequence from rng, so the first k words do not depend on count.
[[nodiscard]] std::vector<std::string> distinct_pseudo_words(Rng& rng, size_t count, int syllables,
                                                             std::unordered_set<std::string>& taken);

}  // namespace kvlab::task_words
