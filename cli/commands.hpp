// The kvlab subcommands. Each takes the arguments after its name and returns the exit code;
// errors are thrown (UsageError → 2, anything else → 1) and reported once, by main.
#pragma once

#include <string>
#include <vector>

namespace kvlab::cli {

using Argv = std::vector<std::string>;

int run_trace(const Argv& argv);     // trace gen | info | validate | stats
int run_replay(const Argv& argv);    // replay a trace through policies
int run_policies(const Argv& argv);  // list registered policies
int run_policy(const Argv& argv);    // policy check
int run_demo(const Argv& argv);      // the default end-to-end run
int run_bench(const Argv& argv);    // replay throughput vs. a plain read-and-sum pass
int run_indexer(const Argv& argv);  // indexer train | eval (LSA's learned indexer)
int run_generate(const Argv& argv);  // live: generate text with the CPU decoder under a policy
int run_run(const Argv& argv);       // live: closed-loop task evaluation of policies
int run_record(const Argv& argv);    // live: record a real trace with full attention
int run_calibrate(const Argv& argv);  // fit replay's timing model to steps measured on a GPU
int run_sweep(const Argv& argv);     // a study from a TOML file: cells, resume, shards, MPI, merge
int run_report(const Argv& argv);    // a sweep's results as a self-contained HTML report

/// Loads every --plugin library (in order). Throws InputError naming the file.
void load_plugins(const std::vector<std::string>& paths);

}  // namespace kvlab::cli
