// kvlab: the command-line front end. Dispatches to a subcommand and turns every error into
// one line on stderr and an exit code (0 ok, 1 failure, 2 usage error); nothing escapes main.
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "cli/version.hpp"
#include "core/error.hpp"

namespace {

using kvlab::cli::Argv;

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const Argv&);
};

const Command kCommands[] = {
    {"trace", "generate, inspect, validate and summarise trace files (gen|info|validate|stats)",
     kvlab::cli::run_trace},
    {"replay", "replay a trace through one or more policies and compare them", kvlab::cli::run_replay},
    {"policies", "list registered policies and their parameters", kvlab::cli::run_policies},
    {"policy", "check a policy against the engine's contract (policy check)", kvlab::cli::run_policy},
    {"indexer", "train and evaluate LSA's Neural Memory Indexer on traces (train|eval)", kvlab::cli::run_indexer},
    {"demo", "generate the default workload and compare every registered policy", kvlab::cli::run_demo},
    {"bench", "measure replay throughput against a plain read-and-sum pass", kvlab::cli::run_bench},
    {"generate", "generate text with the CPU model under a policy (closed loop)", kvlab::cli::run_generate},
    {"run", "closed-loop task accuracy and agreement with full attention per policy", kvlab::cli::run_run},
    {"record", "record a real trace (full attention on the CPU model) for replay", kvlab::cli::run_record},
    {"calibrate", "fit replay's timing model to steps measured on a GPU and check the fit",
     kvlab::cli::run_calibrate},
    {"sweep", "run a study from a TOML file (resumable, shardable, MPI) and merge its cells", kvlab::cli::run_sweep},
    {"report", "render a sweep's results as a self-contained HTML report", kvlab::cli::run_report},
};

void print_usage(std::ostream& out) {
  out << "usage: kvlab <command> [options]\n\n"
         "kvlab replays KV-cache policies over attention traces of long-context decoding and\n"
         "measures their footprint, recall and fetch traffic.\n\ncommands:\n";
  for (const auto& c : kCommands) {
    std::string name = c.name;
    out << "  " << name << std::string(12 - name.size(), ' ') << c.summary << "\n";
  }
  out << "\nRun 'kvlab <command> --help' for the options of a command.\n"
         "  --version   print the version and git revision\n";
}

int dispatch(const Argv& args) {
  if (args.empty()) {
    print_usage(std::cerr);
    return 2;
  }
  const std::string& first = args[0];
  if (first == "--help" || first == "-h" || first == "help") {
    print_usage(std::cout);
    return 0;
  }
  if (first == "--version") {
    std::cout << "kvlab " << kvlab::cli::kVersion << " (" << kvlab::cli::kGitRevision << ")\n";
    return 0;
  }
  for (const auto& c : kCommands) {
    if (first == c.name) return c.run(Argv(args.begin() + 1, args.end()));
  }
  throw kvlab::UsageError("unknown command '" + first + "' (run 'kvlab --help' for the list)");
}

int fail(const char* message, int code) {
  std::cout.flush();
  std::cerr << "kvlab: error: " << kvlab::escape_control(message) << "\n";  // always one line
  return code;
}

// OpenMP threads that wait actively spin a core each between parallel regions; two kvlab
// processes on a shared 2-core machine then starve each other (decode fell to 0.5 tok/s).
// libgomp reads OMP_WAIT_POLICY once, when it is loaded, before main runs: so when the user
// has not chosen a policy, kvlab sets "passive" and executes itself again, once.
void prefer_passive_openmp(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  if (::setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
  ::execv("/proc/self/exe", argv);
  // exec failed (no /proc): carry on with the runtime's default policy.
}

}  // namespace

int main(int argc, char** argv) {
  prefer_passive_openmp(argv);
  try {
    return dispatch(Argv(argv + 1, argv + argc));
  } catch (const kvlab::UsageError& e) {
    return fail(e.what(), 2);
  } catch (const std::exception& e) {  // InputError, PolicyContractError and the rest
    return fail(e.what(), 1);
  } catch (...) {
    return fail("unexpected internal error", 1);
  }
}
