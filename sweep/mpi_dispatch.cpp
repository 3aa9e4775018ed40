#include "sweep/mpi_dispatch.hpp"

#include <cstdint>
#include <cstdlib>

#include "core/error.hpp"

#ifdef KVLAB_HAVE_MPI
#include <mpi.h>
#endif

namespace kvlab::sweep {

bool mpi_launched() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(var) != nullptr) return true;
  }
  return false;
}

#ifdef KVLAB_HAVE_MPI

namespace {

// A worker's report: {cell index or -1 for none yet, 0 ok / 1 failed}; a failure is followed
// by its message. Rank 0 answers with the next cell index, or -1 for stop.
constexpr int kTagReport = 1;
constexpr int kTagMessage = 2;
constexpr int kTagAssign = 3;

}  // namespace

bool mpi_built() { return true; }

MpiSession::MpiSession() {
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (!initialised && MPI_Init(nullptr, nullptr) != MPI_SUCCESS) throw InputError("--mpi: MPI_Init failed");
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

MpiSession::~MpiSession() { MPI_Finalize(); }

std::vector<std::string> mpi_serve(const MpiSession& session, const std::vector<size_t>& todo,
                                   const std::function<void(size_t)>& on_done) {
  std::vector<std::string> failures;
  size_t next = 0;
  int stopped = 0;
  while (stopped < session.size() - 1) {
    int64_t report[2];
    MPI_Status status;
    MPI_Recv(report, 2, MPI_INT64_T, MPI_ANY_SOURCE, kTagReport, MPI_COMM_WORLD, &status);
    const int worker = status.MPI_SOURCE;
    if (report[1] != 0) {
      MPI_Status probe;
      MPI_Probe(worker, kTagMessage, MPI_COMM_WORLD, &probe);
      int length = 0;
      MPI_Get_count(&probe, MPI_CHAR, &length);
      std::string message(static_cast<size_t>(length), '\0');
      MPI_Recv(message.data(), length, MPI_CHAR, worker, kTagMessage, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      failures.push_back(message);
    } else if (report[0] >= 0) {
      on_done(static_cast<size_t>(report[0]));
    }
    int64_t assign = -1;
    if (failures.empty() && next < todo.size()) assign = static_cast<int64_t>(todo[next++]);
    if (assign < 0) ++stopped;
    MPI_Send(&assign, 1, MPI_INT64_T, worker, kTagAssign, MPI_COMM_WORLD);
  }
  return failures;
}

void mpi_work(const MpiSession& session, const std::function<void(size_t)>& run) {
  (void)session;
  int64_t report[2] = {-1, 0};
  std::string message;
  for (;;) {
    MPI_Send(report, 2, MPI_INT64_T, 0, kTagReport, MPI_COMM_WORLD);
    if (report[1] != 0) {
      MPI_Send(message.data(), static_cast<int>(message.size()), MPI_CHAR, 0, kTagMessage, MPI_COMM_WORLD);
    }
    int64_t assign = -1;
    MPI_Recv(&assign, 1, MPI_INT64_T, 0, kTagAssign, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if (assign < 0) return;
    report[0] = assign;
    report[1] = 0;
    try {
      run(static_cast<size_t>(assign));
    } catch (const std::exception& e) {
      report[1] = 1;
      message = e.what();
    }
  }
}

#else  // built without MPI

namespace {
[[noreturn]] void no_mpi() {
  throw InputError("--mpi: this kvlab was built without MPI (install libopenmpi-dev, reconfigure with -DKVLAB_MPI=ON)");
}
}  // namespace

bool mpi_built() { return false; }
MpiSession::MpiSession() { no_mpi(); }
MpiSession::~MpiSession() = default;
std::vector<std::string> mpi_serve(const MpiSession&, const std::vector<size_t>&, const std::function<void(size_t)>&) {
  no_mpi();
}
void mpi_work(const MpiSession&, const std::function<void(size_t)>&) { no_mpi(); }

#endif

}  // namespace kvlab::sweep
