// kvlab bench: replay throughput against a plain pass that only reads and sums the same mass.
//
// Target (from the project brief): a single-threaded replay of `full` and `sliding_window`
// together over a 1M-token, 256-step mix trace of the default geometry takes at most 2x the
// time of read_and_sum_pass over the same file, with peak memory under 2 GB. Throughput is
// given in cells, one cell per (step, layer, stored head, existing chunk).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <thread>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/output.hpp"
#include "cli/replay_run.hpp"
#include "cli/version.hpp"
#include "core/error.hpp"
#include "traces/read_and_sum.hpp"
#include "traces/synthetic.hpp"
#include "traces/trace.hpp"

namespace kvlab::cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

/// Peak resident set size of this process so far, in bytes (VmHWM), or -1 if unknown.
int64_t peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;  // reported in kB
  }
  return -1;
}

/// Resets the peak RSS to the current RSS (Linux >= 4.0), so each phase is measured alone.
bool reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.flush();
  return static_cast<bool>(clear);
}

/// Cells a replay visits: Σ over requests and steps of rows × chunks that exist at the step.
int64_t trace_cells(const std::string& path) {
  const auto reader = TraceReader::open(path);
  const Geometry& g = reader->geometry();
  int64_t cells = 0;
  for (int64_t i = 0; i < reader->request_count(); ++i) {
    const RequestHeader h = reader->request(i)->header();
    const int64_t rows = static_cast<int64_t>(g.n_layers) * h.heads_stored;
    for (int64_t t = 0; t < h.decode_steps; ++t) cells += rows * g.chunks_for(h.prompt_tokens + t + 1);
  }
  return cells;
}

/// Generates the mix trace into the cache folder unless it is already there.
std::string cached_trace(const std::filesystem::path& dir, int requests, int64_t context, int64_t steps,
                         uint64_t seed) {
  const std::string path = (dir / ("mix_r" + std::to_string(requests) + "_t" + std::to_string(context) + "_s" +
                                   std::to_string(steps) + "_seed" + std::to_string(seed) + ".h5"))
                               .string();
  if (std::filesystem::exists(path)) {
    std::cout << "using cached trace " << path << "\n" << std::flush;
    return path;
  }
  std::filesystem::create_directories(dir);
  SyntheticConfig config;
  config.workload = Workload::Mix;
  config.requests = requests;
  config.context_tokens = context;
  config.steps = steps;
  config.seed = seed;
  config.validate();
  std::cout << "generating " << path << " (" << requests << " x " << context << " tokens x " << steps
            << " steps; cached for later runs) ..." << std::flush;
  const auto start = Clock::now();
  generate_trace(config, path);
  std::cout << " " << std::fixed << std::setprecision(1) << seconds_since(start) << " s\n" << std::flush;
  return path;
}

struct Timing {
  double seconds = 0;
  int64_t peak_rss = 0;
};

template <class Fn>
Timing timed(int repeat, Fn&& fn) {
  Timing best{1e300, 0};
  for (int i = 0; i < repeat; ++i) {
    reset_peak_rss();
    const auto start = Clock::now();
    fn();
    best.seconds = std::min(best.seconds, seconds_since(start));
    best.peak_rss = std::max(best.peak_rss, peak_rss_bytes());
  }
  return best;
}

std::vector<ResolvedPolicy> bench_policies() {
  return {PolicyRegistry::instance().resolve("full"), PolicyRegistry::instance().resolve("sliding_window")};
}

Timing time_replay(const std::string& trace, int threads, int repeat) {
  const auto policies = bench_policies();
  return timed(repeat, [&] {
    const auto backend = open_replay_backend(trace);
    EngineOptions options;
    options.threads = threads;
    (void)replay(*backend, policies, options, false);
  });
}

std::string rate(double cells, double seconds) {
  std::ostringstream out;
  out << std::scientific << std::setprecision(3) << cells / seconds;
  return out.str();
}

}  // namespace

int run_bench(const Argv& argv) {
  const CommandSpec spec{
      "kvlab bench [options]",
      "Measures replay throughput in cells per second (one cell per step, layer, stored head and\n"
      "chunk) against a plain pass that only reads and sums the same mass (read_and_sum_pass):\n"
      "(a) the plain pass and (b) a single-threaded replay of full and sliding_window together over\n"
      "one long mix request, with their time ratio (target <= 2) and peak RSS (target < 2 GB);\n"
      "then (c) several requests replayed on one thread and on all cores. Traces are generated once\n"
      "and cached in the cache folder. This is a benchmark, not a test: it never fails on speed.",
      {{"cache-dir", "DIR", "where the generated traces are kept", "results/bench"},
       {"context-tokens", "N", "prompt tokens of the single long request", "1048576"},
       {"steps", "S", "decode steps per request", "256"},
       {"seed", "X", "workload seed", "1"},
       {"repeat", "K", "runs per measurement; the fastest counts", "1"},
       {"multi-requests", "R", "requests in the multi-request trace; 0 = max(2, cores), -1 = skip", "0"},
       {"multi-context-tokens", "N", "prompt tokens of each request in the multi-request trace", "131072"},
       {"json", "", "print the figures as JSON", ""}},
      {},
      "The figures are also written to <cache-dir>/bench.json."};
  const Args args = Args::parse(spec, argv);
  if (args.help()) {
    std::cout << spec.help_text();
    return 0;
  }
  const std::filesystem::path dir(args.get("cache-dir"));
  const int64_t context = args.get_int("context-tokens");
  const int64_t steps = args.get_int("steps");
  const auto seed = static_cast<uint64_t>(args.get_int("seed"));
  const int64_t repeat = args.get_int("repeat");
  if (repeat < 1 || repeat > 100) throw UsageError("--repeat must be between 1 and 100");
  const int cores = static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
  int64_t multi = args.get_int("multi-requests");
  if (multi < -1 || multi > 4096) throw UsageError("--multi-requests must be between -1 and 4096");
  if (multi == 0) multi = std::max(2, cores);
  const int64_t multi_context = args.get_int("multi-context-tokens");
  (void)bench_policies();  // fail early if a policy is missing

  // (a) and (b): one long request.
  const std::string trace = cached_trace(dir, 1, context, steps, seed);
  const double cells = static_cast<double>(trace_cells(trace));
  int64_t stored = 0;
  (void)read_and_sum_pass(trace, &stored);  // warm the page cache so both passes read from memory
  double checksum = 0;
  const Timing plain = timed(static_cast<int>(repeat), [&] { checksum = read_and_sum_pass(trace, nullptr); });
  const Timing single = time_replay(trace, 1, static_cast<int>(repeat));
  const double ratio = single.seconds / plain.seconds;

  nlohmann::json doc = {
      {"kvlab_version", kVersion},
      {"git_revision", kGitRevision},
      {"cores", cores},
      {"single",
       {{"trace", trace},
        {"context_tokens", context},
        {"steps", steps},
        {"cells", cells},
        {"stored_values", stored},
        {"read_and_sum_seconds", plain.seconds},
        {"read_and_sum_cells_per_s", cells / plain.seconds},
        {"read_and_sum_checksum", checksum},
        {"read_and_sum_peak_rss_bytes", plain.peak_rss},
        {"replay_policies", "full + sliding_window"},
        {"replay_seconds", single.seconds},
        {"replay_cells_per_s", cells / single.seconds},
        {"replay_peak_rss_bytes", single.peak_rss},
        {"ratio", ratio},
        {"ratio_target", 2.0},
        {"ratio_met", ratio <= 2.0},
        {"peak_rss_target_bytes", 2e9},
        {"peak_rss_met", single.peak_rss >= 0 && single.peak_rss < 2e9}}}};

  // (c): several requests, one thread vs. all cores.
  if (multi > 0) {
    const std::string multi_trace = cached_trace(dir, static_cast<int>(multi), multi_context, steps, seed);
    const double multi_cells = static_cast<double>(trace_cells(multi_trace));
    (void)read_and_sum_pass(multi_trace, nullptr);
    const Timing one = time_replay(multi_trace, 1, static_cast<int>(repeat));
    const Timing all = time_replay(multi_trace, 0, static_cast<int>(repeat));
    doc["multi"] = {{"trace", multi_trace},
                    {"requests", multi},
                    {"context_tokens", multi_context},
                    {"steps", steps},
                    {"cells", multi_cells},
                    {"one_thread_seconds", one.seconds},
                    {"one_thread_cells_per_s", multi_cells / one.seconds},
                    {"all_cores_threads", cores},
                    {"all_cores_seconds", all.seconds},
                    {"all_cores_cells_per_s", multi_cells / all.seconds},
                    {"all_cores_peak_rss_bytes", all.peak_rss},
                    {"speedup", one.seconds / all.seconds}};
  }
  write_file_atomic((dir / "bench.json").string(), doc.dump(2) + "\n");

  if (args.has("json")) {
    std::cout << doc.dump(2) << "\n";
    return 0;
  }
  const auto& s = doc["single"];
  std::cout << std::fixed << std::setprecision(3) << "\nsingle request: " << context << " tokens x " << steps
            << " steps, " << std::setprecision(0) << cells << " cells (" << stored << " stored values)\n"
            << std::setprecision(3) << "  (a) read_and_sum pass            " << std::setw(9) << plain.seconds
            << " s  " << rate(cells, plain.seconds) << " cells/s  peak RSS "
            << human_bytes(static_cast<double>(plain.peak_rss)) << "\n"
            << "  (b) replay full+sliding_window   " << std::setw(9) << single.seconds << " s  "
            << rate(cells, single.seconds) << " cells/s  peak RSS "
            << human_bytes(static_cast<double>(single.peak_rss)) << "\n"
            << "  ratio (b)/(a) " << std::setprecision(2) << ratio << " (target <= 2: "
            << (s["ratio_met"].get<bool>() ? "met" : "NOT met") << "); peak RSS target < 2 GB: "
            << (s["peak_rss_met"].get<bool>() ? "met" : "NOT met") << "\n";
  if (doc.contains("multi")) {
    const auto& m = doc["multi"];
    std::cout << "\n" << multi << " requests: " << multi_context << " tokens x " << steps << " steps\n"
              << std::setprecision(3) << std::left << std::setw(35) << "  replay on 1 thread" << std::right
              << std::setw(9)
              << m["one_thread_seconds"].get<double>() << " s  " << rate(m["cells"], m["one_thread_seconds"])
              << " cells/s\n"
              << std::left << std::setw(35) << ("  replay on " + std::to_string(cores) + " threads") << std::right
              << std::setw(9)
              << m["all_cores_seconds"].get<double>() << " s  " << rate(m["cells"], m["all_cores_seconds"])
              << " cells/s  speedup " << std::setprecision(2) << m["speedup"].get<double>() << "x\n";
  }
  std::cout << "\nwrote " << (dir / "bench.json").string() << "\n";
  return 0;
}

}  // namespace kvlab::cli
