#include "traces/tasks/word_lists.hpp"

#include "core/error.hpp"

namespace kvlab::task_words {

const std::vector<std::string_view>& adjectives() {
  static const std::vector<std::string_view> words = {
      "quiet",   "brave",   "silver", "hollow", "gentle", "rapid",  "ancient", "bitter", "calm",      "clever",
      "crimson", "distant", "eager",  "fierce", "frozen", "golden", "humble",  "hidden", "jolly",     "lively",
      "lonely",  "lucky",   "mellow", "narrow", "noble",  "odd",    "pale",    "proud",  "quick",     "rusty",
      "shiny",   "silent",  "sleepy", "smooth", "snowy",  "solid",  "spare",   "steady", "sturdy",    "sunny",
      "swift",   "tender",  "tidy",   "tiny",   "upbeat", "vast",   "velvet",  "vivid",  "wandering", "warm",
      "wicked",  "wild",    "windy",  "wise",   "witty",  "young",  "zealous", "amber",  "bold",      "cosmic",
      "dusty",   "fuzzy",   "glossy", "misty"};
  return words;
}

const std::vector<std::string_view>& nouns() {
  static const std::vector<std::string_view> words = {
      "harbor",  "falcon",  "lantern", "meadow",  "compass", "thunder", "orchard", "glacier", "pebble",   "canyon",
      "beacon",  "cactus",  "dolphin", "ember",   "feather", "garnet",  "hammock", "iceberg", "jigsaw",   "kettle",
      "ladder",  "magnet",  "nectar",  "oyster",  "parrot",  "quarry",  "raven",   "saddle",  "tundra",   "umbrella",
      "volcano", "walrus",  "yonder",  "zephyr",  "anchor",  "bramble", "cobweb",  "dynamo",  "estuary",  "fjord",
      "gazebo",  "horizon", "island",  "juniper", "kiosk",   "lagoon",  "mosaic",  "nebula",  "obelisk",  "paddle",
      "quiver",  "riddle",  "sparrow", "trellis", "urchin",  "vortex",  "willow",  "yarrow",  "zeppelin", "badger",
      "cinder",  "drizzle", "fresco",  "grotto"};
  return words;
}

const std::vector<std::string_view>& common_words() {
  static const std::vector<std::string_view> words = {
      "apple",    "bread",    "chair",    "table",    "window",   "garden",   "river",    "mountain", "pencil",
      "bottle",   "candle",   "basket",   "blanket",  "bridge",   "button",   "camera",   "carpet",   "castle",
      "cheese",   "circle",   "cloud",    "coffee",   "cookie",   "corner",   "cotton",   "country",  "cousin",
      "desert",   "dinner",   "doctor",   "dragon",   "drawer",   "engine",   "farmer",   "finger",   "flower",
      "forest",   "friend",   "garage",   "ginger",   "guitar",   "hammer",   "helmet",   "honey",    "jacket",
      "jungle",   "kitchen",  "letter",   "lemon",    "library",  "lizard",   "market",   "mirror",   "monkey",
      "needle",   "number",   "office",   "orange",   "palace",   "paper",    "pepper",   "picture",  "pillow",
      "pirate",   "planet",   "pocket",   "potato",   "puzzle",   "rabbit",   "rocket",   "school",   "shadow",
      "silence",  "singer",   "spider",   "spring",   "station",  "summer",   "supper",   "sweater",  "teacher",
      "ticket",   "tiger",    "tomato",   "tower",    "travel",   "turtle",   "valley",   "village",  "violin",
      "wagon",    "wallet",   "water",    "winter",   "wizard",   "yellow",   "zipper",   "airport",  "balloon",
      "bicycle",  "biscuit",  "blossom",  "cabinet",  "captain",  "cereal",   "chimney",  "climate",  "clothes",
      "costume",  "cupboard", "diamond",  "dolphins", "elephant", "envelope", "festival", "fountain", "giraffe",
      "grandson", "hospital", "journey",  "kingdom",  "lantern",  "lettuce",  "machine",  "mailbox",  "mushroom",
      "notebook", "octopus",  "painter",  "pancake",  "passport", "penguin",  "pumpkin",  "railway",  "sandwich",
      "scissors", "shoulder", "soldier",  "squirrel", "stomach",  "sunlight", "teapot",   "theater",  "thread",
      "tractor",  "uniform",  "vacation", "weather",  "whistle",  "cabbage",  "carrot",   "cherry",   "crystal",
      "feather",  "garlic",   "harvest",  "island",   "jewel",    "kettle",   "ladder",   "marble",   "melody",
      "napkin",   "ocean",    "parade",   "peanut",   "plastic",  "rainbow",  "saddle",   "shovel",   "sister",
      "statue",   "stream",   "student",  "sugar",    "thunder",  "trumpet",  "tunnel",   "velvet",   "walnut",
      "whisker",  "anchor",   "blender",  "bucket",   "canvas",   "cattle",   "chicken",  "compass",  "cracker",
      "daisy",    "donkey",   "feast",    "fiddle",   "glove",    "goose",    "gravel",   "hockey",   "insect",
      "ladle",    "lobster",  "meadow",   "mitten",   "noodle",   "orchard",  "oyster",   "parrot",   "pebble",
      "plumber",  "quilt",    "radish",   "saucer",   "spoon",    "tablet",   "toaster",  "umbrella", "violet",
      "waffle",   "beaver",   "butter",   "canoe",    "closet",   "dentist",  "eagle",    "fabric",   "gadget",
      "hamster",  "igloo",    "jigsaw",   "kitten",   "lawyer",   "muffin",   "nephew",   "oatmeal",  "pajamas",
      "pilot",    "racket",   "salmon",   "sheep",    "sponge",   "tennis",   "trolley",  "vessel",   "wheat",
      "yogurt",   "zebra"};
  return words;
}

std::string key_word(Rng& rng) {
  const auto& adj = adjectives();
  const auto& noun = nouns();
  std::string key(adj[rng.below(adj.size())]);
  key += '-';
  key += noun[rng.below(noun.size())];
  return key;
}

std::string pseudo_word(Rng& rng, int syllables) {
  // No 'y' or 'x' and plain vowels: the words tokenize like ordinary text and are easy to read.
  static constexpr std::string_view kConsonants = "bcdfghklmnprstvz";
  static constexpr std::string_view kVowels = "aeiou";
  std::string word;
  for (int s = 0; s < syllables; ++s) {
    word += kConsonants[rng.below(kConsonants.size())];
    word += kVowels[rng.below(kVowels.size())];
  }
  return word;
}

std::vector<std::string> distinct_pseudo_words(Rng& rng, size_t count, int syllables,
                                               std::unordered_set<std::string>& taken) {
  // 80 syllables per position; asking for more than a small part of the space would make the
  // rejection loop slow (and, past the whole space, endless).
  double space = 1.0;
  for (int s = 0; s < syllables; ++s) {
    space *= 80.0;
  }
  if (static_cast<double>(count + taken.size()) > space / 4.0) {
    throw InputError("task generator: " + std::to_string(count) + " distinct " + std::to_string(syllables) +
                     "-syllable words requested, too many");
  }
  std::vector<std::string> out;
  out.reserve(count);
  while (out.size() < count) {
    std::string w = pseudo_word(rng, syllables);
    if (taken.insert(w).second) {
      out.push_back(std::move(w));
    }
  }
  return out;
}

}  // namespace kvlab::task_words
