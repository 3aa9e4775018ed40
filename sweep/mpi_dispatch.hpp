// Dynamic dispatch of a sweep's cells over MPI ranks: rank 0 hands out one cell at a time to
// whichever rank asks next, so slow cells do not hold up a static share; the other ranks run
// them. Works under any launcher (mpirun, srun) of the MPI library kvlab was built with; in a
// build without MPI every call says so in a one-line InputError.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace kvlab::sweep {

/// True when kvlab was built with MPI (CMake KVLAB_MPI=AUTO found it, or ON).
bool mpi_built();
/// True when the environment shows an MPI launcher (Open MPI, PMI or PMIx variables).
bool mpi_launched();

/// MPI_Init on construction, MPI_Finalize on destruction.
class MpiSession {
 public:
  MpiSession();
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  [[nodiscard]] int rank() const { return rank_; }
  [[nodiscard]] int size() const { return size_; }

 private:
  int rank_ = 0;
  int size_ = 1;
};

/// Rank 0: serves `todo` (cell indices) to ranks 1..size-1 until none is left and every rank
/// was told to stop. `on_done(index)` runs when a rank reports a cell finished. After a failure
/// no new cell is handed out. Returns the failures' messages.
std::vector<std::string> mpi_serve(const MpiSession& session, const std::vector<size_t>& todo,
                                   const std::function<void(size_t)>& on_done);
/// Ranks other than 0: asks rank 0 for a cell, runs `run(index)`, reports, until told to stop.
/// An exception from `run` is reported to rank 0 (which stops handing out cells), not rethrown.
void mpi_work(const MpiSession& session, const std::function<void(size_t)>& run);

}  // namespace kvlab::sweep
