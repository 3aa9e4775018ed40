// kvlab indexer train | eval: LSA's Neural Memory Indexer, trained backbone-free on traces.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/output.hpp"
#include "cli/progress.hpp"
#include "cli/version.hpp"
#include "core/error.hpp"
#include "core/params.hpp"
#include "indexer/inference/indexer_io.hpp"
#include "indexer/training/trace_dataset.hpp"
#include "indexer/training/references.hpp"
#include "indexer/training/trainer.hpp"
#include "traces/trace.hpp"
#include "traces/validate.hpp"

namespace kvlab::cli {
namespace {

using nlohmann::json;

const CommandSpec kTrainSpec{
    "kvlab indexer train --traces FILE [FILE ...] --out FILE [options]",
    "Trains LSA's Neural Memory Indexer (a dual encoder over `query` and `chunk_features`) on lookahead labels "
    "computed from traces: at each refresh point t, a complete chunk outside the sinks and window is positive if it "
    "is critical at any step in [t, t+tau). Reads only traces, never a model. The checkpoint is written atomically.",
    {{"traces", "FILE", "training traces (repeat the flag or list several files)", "", true, true},
     {"out", "FILE", "checkpoint to write", "", false, true},
     {"steps", "N", "optimiser steps (each of --batch refresh points)", std::to_string(IndexerTrainOptions{}.steps)},
     {"warmup", "N", "steps of linear learning-rate warm-up", std::to_string(IndexerTrainOptions{}.warmup)},
     {"lr", "X", "Adam learning rate after warm-up", param_number_text(IndexerTrainOptions{}.lr)},
     {"lr-final", "X", "the cosine decay ends at lr times this", param_number_text(IndexerTrainOptions{}.lr_final)},
     {"eval-every", "N", "steps between validations", std::to_string(IndexerTrainOptions{}.eval_every)},
     {"min-steps", "N", "early stopping never ends a run before this many steps",
      std::to_string(IndexerTrainOptions{}.min_steps)},
     {"patience", "N",
      "steps without a better validation recall before stopping, counted once the model has beaten the untrained "
      "one (0 = off; passes with --epochs)",
      std::to_string(IndexerTrainOptions{}.patience)},
     {"epochs", "N",
      "instead of --steps: N passes at a constant lr, validated after each (the earlier schedule; no warm-up or "
      "decay)",
      ""},
     {"batch", "N", "groups (refresh points) per optimiser step", std::to_string(IndexerTrainOptions{}.batch)},
     {"dim", "N", "embedding size", std::to_string(IndexerTrainOptions{}.dim)},
     {"depth", "N", "hidden layers per tower (0 = linear towers)", std::to_string(IndexerTrainOptions{}.depth)},
     {"width", "N", "hidden width per tower", std::to_string(IndexerTrainOptions{}.width)},
     {"skip", "on|off", "towers with depth > 0 get a linear input-to-output path", "off"},
     {"layers", "L,L,...",
      "feature layers to read, in this order, from traces recorded with --feature-layers (default: every layer the "
      "traces carry)", ""},
     {"combine", "concat|max|sum",
      "several layers: one tower pair over their features side by side (concat), or a tower pair per layer with "
      "the chunk score the max (FlashMemory's cross-layer max) or the sum of the layers' scores", "concat"},
     {"loss", "NAME", "binary or listwise", "listwise"},
     {"tau", "N", "lookahead horizon in decode steps", std::to_string(LabelOptions{}.tau)},
     {"window", "N", "recent tokens that are never candidates", std::to_string(LabelOptions{}.window)},
     {"sinks", "N", "initial tokens that are never candidates", std::to_string(LabelOptions{}.sinks)},
     {"stride", "N", "steps between training refresh points", "16"},
     {"critical-mass", "P", "p of the critical sets that define positives",
      param_number_text(LabelOptions{}.critical_mass)},
     {"query-pool", "N", "the query at a refresh is the mean of the last N steps' query features",
      std::to_string(kDefaultQueryPool)},
     {"negatives", "N", "negatives kept per training refresh point, sampled (0 = all)", "512"},
     {"val-fraction", "X", "share of requests held out for validation", "0.1"},
     {"requests-per-trace", "N", "read only the first N requests of each trace (nested training sets); 0 = all", "0"},
     {"reference", "on|off",
      "after training, fit the closed-form bilinear reference and report it and lsa_oracle on the validation set",
      "on"},
     {"seed", "N", "training seed (same seed, same weights)", "0"},
     {"threads", "N", "threads (0 = all cores)", "0"}},
    {},
    "example: kvlab indexer train --traces train.h5 --out idx.h5\n"
    "\n"
    "Training runs by optimiser steps: a linear warm-up, then a cosine decay of the learning rate. The model is\n"
    "validated every --eval-every steps on held-out requests and the best validation is kept. Early stopping\n"
    "waits at least --min-steps, and counts --patience only once validation recall has risen above the untrained\n"
    "model's, so a small training set cannot stop before the model has moved. At the end the validation recall is\n"
    "printed next to two references: a bilinear model fitted in closed form on the same training requests and\n"
    "lsa_oracle (the true labels ranked first)."};

const CommandSpec kEvalSpec{
    "kvlab indexer eval --indexer FILE --trace FILE [--trace FILE ...] [options]",
    "Ranking quality of an indexer alone: at every refresh point of the traces, the fraction of lookahead-critical "
    "chunks that fall in its top k, for several k (over several traces: pooled, every critical chunk counted once). "
    "The labels use the options the indexer was trained with unless given here.",
    {{"indexer", "FILE", "indexer checkpoint", "", false, true},
     {"trace", "FILE", "trace to evaluate on (held out from training); repeat for several", "", true, true},
     {"k", "LIST", "comma-separated k values", "8,16,32,64,128,256"},
     {"tau", "N", "lookahead horizon (default: the indexer's)", ""},
     {"window", "N", "recent tokens never candidates (default: the indexer's)", ""},
     {"sinks", "N", "initial tokens never candidates (default: the indexer's)", ""},
     {"json", "", "print JSON instead of a table", ""},
     {"threads", "N", "threads (0 = all cores)", "0"}},
    {},
    ""};

std::vector<int> parse_ks(const std::string& text) {
  std::vector<int> ks;
  for (const int64_t k : parse_int_list(text, "--k")) {
    if (k <= 0 || k > INT32_MAX) throw UsageError("--k: every k must be positive, got " + std::to_string(k));
    ks.push_back(static_cast<int>(k));
  }
  return ks;
}

json recall_json(const RecallCounts& counts) {
  json out = json::object();
  for (size_t i = 0; i < counts.ks.size(); ++i) out["recall@" + std::to_string(counts.ks[i])] = counts.recall(i);
  out["positives"] = counts.positives;
  out["groups"] = counts.groups;
  return out;
}

// "--traces A.h5 B.h5 C.h5" means three --traces flags.
Argv expand_multi_value(const Argv& argv, const std::string& flag) {
  Argv out;
  bool in_list = false;
  for (const auto& a : argv) {
    if (a.rfind("--", 0) == 0) {
      in_list = a == flag;
      if (in_list) continue;
    } else if (in_list) {
      out.push_back(flag);
    }
    out.push_back(a);
  }
  return out;
}

// Why training data came out empty, naming the traces and tau when the requests are too short.
std::string no_refresh_points(const std::vector<std::string>& traces, const LabelOptions& labels) {
  int64_t longest = 0;
  for (const auto& path : traces) {
    for (const RequestHeader& h : kvlab::trace_info(path).requests) longest = std::max(longest, h.decode_steps);
  }
  std::string names;
  for (const auto& path : traces) names += (names.empty() ? "" : ", ") + path;
  if (longest <= labels.tau) {
    return "--traces " + names + ": no refresh points: the longest request has " + std::to_string(longest) +
           " decode steps, not more than --tau = " + std::to_string(labels.tau) +
           " (a label needs tau steps after its refresh)";
  }
  return "--traces " + names + ": no refresh points with a candidate chunk outside --window = " +
         std::to_string(labels.window) + " and --sinks = " + std::to_string(labels.sinks);
}

/// Where training stands on the validation requests: untrained, trained, and the references.
void print_standing(std::ostream& out, const std::vector<int>& ks, const IndexerValidation& initial,
                    const IndexerValidation& best, const std::optional<IndexerReferences>& refs) {
  out << "validation recall  " << std::left << std::setw(22) << "";
  for (const int k : ks) out << std::right << std::setw(9) << ("@" + std::to_string(k));
  out << "\n";
  auto row = [&](const std::string& name, const std::vector<double>& values) {
    out << "  " << std::left << std::setw(38) << name;
    for (const double v : values) out << std::right << std::setw(9) << std::fixed << std::setprecision(3) << v;
    out << "\n";
  };
  row("untrained", initial.val_recall);
  row("trained (step " + std::to_string(best.step) + ")", best.val_recall);
  if (refs) {
    std::ostringstream name;
    name << "bilinear, closed form (ridge " << std::setprecision(0) << std::scientific << refs->ridge << ")";
    row(name.str(), refs->bilinear);
    row("lsa_oracle (true labels)", refs->oracle);
  }
}

int train(const Argv& argv) {
  const Args args = Args::parse(kTrainSpec, expand_multi_value(argv, "--traces"));
  if (args.help()) {
    std::cout << kTrainSpec.help_text();
    return 0;
  }
  check_output_path(args.get("out"), "--out");  // before the training, not after it
  LabelOptions labels;
  labels.tau = args.get_int("tau");
  labels.window = args.get_int("window");
  labels.sinks = args.get_int("sinks");
  labels.stride = args.get_int("stride");
  labels.critical_mass = args.get_double("critical-mass");
  labels.max_negatives = args.get_int("negatives");
  labels.query_pool = args.get_int("query-pool");
  labels.validate();

  IndexerTrainOptions opt;
  opt.steps = args.get_int("steps");
  opt.warmup = args.get_int("warmup");
  opt.lr_final = args.get_double("lr-final");
  opt.eval_every = args.get_int("eval-every");
  opt.min_steps = args.get_int("min-steps");
  if (args.has("epochs")) {
    opt.epochs = args.get_int32("epochs");
    if (opt.epochs < 1) throw UsageError("--epochs must be >= 1, got " + std::to_string(opt.epochs));
  }
  opt.lr = args.get_double("lr");
  opt.batch = args.get_int32("batch");
  opt.dim = args.get_int32("dim");
  opt.depth = args.get_int32("depth");
  opt.width = args.get_int32("width");
  opt.skip = parse_on_off(args.get("skip"), "--skip");
  opt.combine = parse_layer_combine(args.get("combine"), "--combine");
  std::optional<std::vector<int>> layers;
  if (args.has("layers")) {
    layers.emplace();
    for (const int64_t l : parse_int_list(args.get("layers"), "--layers")) {
      if (l < 0 || l > 4096) throw UsageError("--layers: " + std::to_string(l) + " is not a layer index");
      if (std::find(layers->begin(), layers->end(), static_cast<int>(l)) != layers->end()) {
        throw UsageError("--layers: layer " + std::to_string(l) + " is listed twice");
      }
      layers->push_back(static_cast<int>(l));
    }
  }
  opt.loss.kind = parse_loss(args.get("loss"));
  opt.val_fraction = args.get_double("val-fraction");
  opt.patience = args.get_int("patience");
  if (opt.patience < 0) throw UsageError("--patience must be >= 0, got " + std::to_string(opt.patience));
  const bool references = parse_on_off(args.get("reference"), "--reference");
  opt.seed = static_cast<uint64_t>(args.get_int("seed"));
  opt.threads = args.get_threads();
  opt.validate();

  const auto t0 = std::chrono::steady_clock::now();
  TraceDatasetSummary summary;
  const std::vector<std::string> traces = args.get_all("traces");
  const int64_t requests_per_trace = args.get_int("requests-per-trace");
  if (requests_per_trace < 0) throw UsageError("--requests-per-trace must be >= 0, got " + std::to_string(requests_per_trace));
  const std::vector<IndexerRequest> data = load_indexer_data(traces, labels, &summary, layers, requests_per_trace);
  if (summary.groups == 0) throw InputError(no_refresh_points(traces, labels));
  opt.layers = summary.layers;
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cerr << "indexer: " << summary.requests << " requests, " << summary.groups << " refresh points, "
            << summary.candidates << " candidates (" << summary.positives << " positive), d_query=" << summary.d_query
            << ", d_key=" << summary.d_key;
  if (!summary.feature_layers.empty()) {
    std::cerr << " (layers " << feature_layers_text(summary.feature_layers) << ", " << layer_combine_name(opt.combine)
              << ")";
  }
  std::cerr << "; labels in " << std::fixed << std::setprecision(1) << load_s << " s\n";

  ProgressBar bar("train");
  const IndexerTrainResult result = train_indexer(data, opt, [&](const IndexerProgress& p) {
    // "step 300/3000  lr 0.00291  loss 2.4392  val recall@16 0.5665": on the bar while training
    // runs (the latest validation), as a line of its own at each validation.
    char recall[16] = "-";  // no validation yet
    if (!std::isnan(p.val_recall)) std::snprintf(recall, sizeof(recall), "%.4f", p.val_recall);
    char status[160];
    std::snprintf(status, sizeof(status), "step %lld/%lld  lr %.3g  loss %.4f  val recall@%d %s",
                  static_cast<long long>(p.step), static_cast<long long>(p.steps), p.lr, p.train_loss, opt.primary_k,
                  recall);
    bar.update(p.step, p.steps, status);
    if (p.validated) {
      bar.clear();
      std::cerr << status << "\n";
    }
  });
  bar.finish();

  const IndexerValidation& best = result.best_validation();
  const IndexerValidation& initial = result.history.front();
  json metrics = {{"best_step", best.step},
                  {"steps_run", result.steps_run},
                  {"steps_per_pass", result.steps_per_pass},
                  {"stopped", result.stop == IndexerStop::EarlyStopping ? "early stopping" : "steps"},
                  {"samples_per_second", result.samples_per_second},
                  {"candidates_per_second", result.candidates_per_second},
                  {"train_groups", result.train_groups}};
  for (size_t i = 0; i < best.val_recall.size(); ++i) {
    metrics["val_recall@" + std::to_string(opt.recall_ks[i])] = best.val_recall[i];
    metrics["untrained_val_recall@" + std::to_string(opt.recall_ks[i])] = initial.val_recall[i];
  }
  std::optional<IndexerReferences> refs;
  if (references && !result.split.val.empty()) {
    BilinearOptions bilinear;
    bilinear.primary_k = opt.primary_k;
    bilinear.threads = opt.threads;
    try {
      refs = indexer_references(data, result.split, opt.recall_ks, bilinear);
    } catch (const InputError& e) {
      std::cerr << "indexer: no references: " << e.what() << "\n";  // e.g. a validation set without positives
    }
  }
  if (refs) {
    json r = {{"ridge", refs->ridge}, {"query_dims", refs->query_dims}, {"key_dims", refs->key_dims}};
    for (size_t i = 0; i < refs->ks.size(); ++i) {
      r["bilinear_val_recall@" + std::to_string(refs->ks[i])] = refs->bilinear[i];
      r["lsa_oracle_val_recall@" + std::to_string(refs->ks[i])] = refs->oracle[i];
    }
    metrics["references"] = r;
  }
  const json training = {{"steps", opt.steps},
                         {"epochs", opt.epochs},
                         {"warmup", opt.warmup},
                         {"lr", opt.lr},
                         {"lr_final", opt.lr_final},
                         {"eval_every", opt.eval_every},
                         {"min_steps", opt.min_steps},
                         {"patience", opt.patience},
                         {"batch", opt.batch},
                         {"loss", loss_name(opt.loss.kind)},
                         {"seed", opt.seed},
                         {"val_fraction", opt.val_fraction},
                         {"negatives", labels.max_negatives},
                         {"grad_clip", opt.grad_clip},
                         {"weight_decay", opt.weight_decay}};
  json provenance = {{"traces", traces}, {"fingerprints", summary.fingerprints},
                     {"kvlab", std::string(kVersion) + " (" + kGitRevision + ")"}};
  if (requests_per_trace > 0) provenance["requests_per_trace"] = requests_per_trace;
  // Like every other output, --out may name a folder that does not exist yet.
  const std::filesystem::path out_parent = std::filesystem::path(args.get("out")).parent_path();
  if (!out_parent.empty()) std::filesystem::create_directories(out_parent);
  save_indexer(args.get("out"), result.model, labels, training.dump(), metrics.dump(), provenance.dump(),
               summary.feature_layers);

  std::cout << "wrote " << args.get("out") << ": best step " << best.step << " of " << result.steps_run
            << (result.stop == IndexerStop::EarlyStopping ? " (early stopping)" : "");
  for (size_t i = 0; i < best.val_recall.size(); ++i) {
    std::cout << ", val recall@" << opt.recall_ks[i] << " " << std::setprecision(3) << best.val_recall[i];
  }
  std::cout << "; " << std::fixed << std::setprecision(0) << result.samples_per_second << " refresh points/s, "
            << result.candidates_per_second << " candidates/s\n";
  if (!best.val_recall.empty()) print_standing(std::cout, opt.recall_ks, initial, best, refs);
  return 0;
}

int eval(const Argv& argv) {
  const Args args = Args::parse(kEvalSpec, argv);
  if (args.help()) {
    std::cout << kEvalSpec.help_text();
    return 0;
  }
  const int threads = args.get_threads();  // flags first, before any file is read
  const LoadedIndexer indexer = [&] {
    try {
      return load_indexer(args.get("indexer"));
    } catch (const InputError& e) {
      throw InputError(std::string("--indexer: ") + e.what());
    }
  }();
  LabelOptions labels = indexer.labels;
  labels.stride = labels.tau;  // the refresh points a deployed policy would use
  if (args.has("tau")) labels.tau = labels.stride = args.get_int("tau");
  if (args.has("window")) labels.window = args.get_int("window");
  if (args.has("sinks")) labels.sinks = args.get_int("sinks");
  labels.validate();
  TraceDatasetSummary summary;
  // The layers the indexer reads (its first, or only, layer when it names none).
  const std::vector<std::string> traces = args.get_all("trace");
  const std::vector<IndexerRequest> data = load_indexer_data(traces, labels, &summary, indexer.feature_layers);
  const auto& c = indexer.model.config();
  if (summary.d_query != c.d_query || summary.d_key != c.d_key) {
    throw InputError("--indexer: " + args.get("indexer") + " expects d_query=" + std::to_string(c.d_query) +
                     ", d_key=" + std::to_string(c.d_key) + " but " + traces.front() + " has d_query=" +
                     std::to_string(summary.d_query) + ", d_key=" + std::to_string(summary.d_key));
  }
  const std::vector<int> ks = parse_ks(args.get("k"));
  const RecallCounts counts =
      evaluate_indexer(indexer.model, data, {}, ks, threads);
  json out = recall_json(counts);
  out["indexer"] = args.get("indexer");
  // "trace" as before for one file; "traces" always lists what was pooled.
  if (traces.size() == 1) out["trace"] = traces.front();
  out["traces"] = traces;
  out["tau"] = labels.tau;
  out["window"] = labels.window;
  out["candidates_per_group"] =
      summary.groups > 0 ? static_cast<double>(summary.candidates) / static_cast<double>(summary.groups) : 0.0;
  if (args.has("json")) {
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  const std::string on = traces.size() == 1 ? traces.front() : std::to_string(traces.size()) + " traces";
  std::cout << "indexer " << args.get("indexer") << " on " << on << ": " << counts.groups
            << " refresh points, " << counts.positives << " lookahead-critical chunks, "
            << std::setprecision(0) << std::fixed << out["candidates_per_group"].get<double>()
            << " candidates per refresh\n";
  for (size_t i = 0; i < ks.size(); ++i) {
    std::cout << "  recall@" << std::left << std::setw(5) << ks[i] << std::right << std::setprecision(3)
              << counts.recall(i) << "\n";
  }
  return 0;
}

}  // namespace

int run_indexer(const Argv& argv) {
  const std::string usage = "usage: kvlab indexer train|eval [options] (see kvlab indexer train --help)";
  if (argv.empty()) throw UsageError(usage);
  const std::string& verb = argv[0];
  const Argv rest(argv.begin() + 1, argv.end());
  if (verb == "train") return train(rest);
  if (verb == "eval") return eval(rest);
  if (verb == "--help" || verb == "-h") {
    std::cout << usage << "\n";
    return 0;
  }
  throw UsageError("indexer: unknown verb '" + verb + "' (train, eval)");
}

}  // namespace kvlab::cli
