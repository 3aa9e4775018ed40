#include "traces/output_file.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "core/error.hpp"

namespace kvlab {
namespace fs = std::filesystem;

namespace {

// ---- temporaries removed on SIGTERM / SIGINT ---------------------------------------------
// The handler may only make async-signal-safe calls: it walks a fixed array of C strings
// (allocated outside the handler) and unlinks each, then re-raises the signal with its
// default action so the exit status still says how the process ended.
constexpr size_t kSlots = 64;
std::array<std::atomic<char*>, kSlots> g_temporaries{};

extern "C" void remove_temporaries_and_reraise(int sig) {
  for (auto& slot : g_temporaries) {
    if (char* path = slot.load()) ::unlink(path);
  }
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

void install_handlers_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (int sig : {SIGTERM, SIGINT}) {
      struct sigaction old {};
      sigaction(sig, nullptr, &old);
      if (old.sa_handler != SIG_DFL) continue;  // the program handles (or ignores) it itself
      struct sigaction act {};
      act.sa_handler = remove_temporaries_and_reraise;
      sigemptyset(&act.sa_mask);
      sigaction(sig, &act, nullptr);
    }
  });
}

int register_temporary(const std::string& path) {
  install_handlers_once();
  char* copy = ::strdup(path.c_str());
  if (copy == nullptr) return -1;
  for (size_t i = 0; i < kSlots; ++i) {
    char* expected = nullptr;
    if (g_temporaries[i].compare_exchange_strong(expected, copy)) return static_cast<int>(i);
  }
  std::free(copy);
  return -1;  // more than kSlots outputs at once: this one is only removed by its destructor
}

void unregister_temporary(int slot) {
  if (slot < 0) return;
  std::free(g_temporaries[static_cast<size_t>(slot)].exchange(nullptr));
}

// ---- stale temporaries -------------------------------------------------------------------

bool process_alive(long pid) { return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM); }

// Removes `<name>.tmp.<pid>` beside `target` for every pid that is no longer running.
void remove_stale_temporaries(const fs::path& target) {
  const fs::path folder = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string prefix = target.filename().string() + ".tmp.";
  std::error_code ec;
  for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string pid_text = name.substr(prefix.size());
    if (pid_text.find_first_not_of("0123456789") != std::string::npos || pid_text.size() > 9) continue;
    const long pid = std::strtol(pid_text.c_str(), nullptr, 10);
    if (pid == static_cast<long>(::getpid()) || process_alive(pid)) continue;
    std::error_code ignore;
    if (it->is_regular_file(ignore)) fs::remove(it->path(), ignore);
  }
}

// What the existing object at `path` is, for the refusal ("" when absent or a regular file).
std::string refusal(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return "";
  if (S_ISLNK(st.st_mode)) return "is a symbolic link (kvlab does not replace links; give the link's target)";
  if (S_ISREG(st.st_mode)) return "";
  if (S_ISDIR(st.st_mode)) return "is a folder";
  if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) return "is a device, not a regular file";
  if (S_ISFIFO(st.st_mode)) return "is a FIFO, not a regular file";
  return "exists and is not a regular file";
}

}  // namespace

void check_output_path(const std::string& path, const std::string& what) {
  if (path.empty()) throw UsageError(what + ": empty path");
  if (const std::string why = refusal(path); !why.empty()) throw InputError(what + " " + path + ": " + why);
  const fs::path target(path);
  const fs::path folder = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(folder, ec);
  if (ec) throw InputError(what + " " + path + ": cannot create folder " + folder.string() + " (" + ec.message() + ")");
  if (!fs::is_directory(folder, ec)) throw InputError(what + " " + path + ": " + folder.string() + " is not a folder");
  if (::access(folder.c_str(), W_OK | X_OK) != 0) {
    throw InputError(what + " " + path + ": cannot write into folder " + folder.string() + " (" +
                     std::strerror(errno) + ")");
  }
}

TempOutput::TempOutput(std::string path, const std::string& what)
    : path_(std::move(path)), temp_(path_ + ".tmp." + std::to_string(::getpid())) {
  check_output_path(path_, what);
  remove_stale_temporaries(fs::path(path_));
  slot_ = register_temporary(temp_);
}

TempOutput::~TempOutput() { discard(); }

void TempOutput::discard() {
  if (done_) return;
  done_ = true;
  std::error_code ec;
  fs::remove(temp_, ec);
  unregister_temporary(slot_);
}

void TempOutput::commit() {
  if (done_) throw std::logic_error("TempOutput::commit after commit or discard");
  if (const std::string why = refusal(path_); !why.empty()) {
    discard();
    throw InputError(path_ + ": " + why);
  }
  std::error_code ec;
  fs::rename(temp_, path_, ec);
  if (ec) {
    discard();
    throw InputError(path_ + ": cannot rename into place (" + ec.message() + ")");
  }
  done_ = true;
  unregister_temporary(slot_);
}

void TempOutput::commit_together(const std::vector<TempOutput*>& outputs) {
  for (TempOutput* out : outputs) {
    if (out->done_) throw std::logic_error("TempOutput::commit_together after commit or discard");
    if (const std::string why = refusal(out->path_); !why.empty()) throw InputError(out->path_ + ": " + why);
  }
  sigset_t block;
  sigset_t previous;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGINT);
  pthread_sigmask(SIG_BLOCK, &block, &previous);
  std::string failure;
  for (TempOutput* out : outputs) {
    std::error_code ec;
    if (failure.empty()) fs::rename(out->temp_, out->path_, ec);
    if (ec) failure = out->path_ + ": cannot rename into place (" + ec.message() + ")";
    if (failure.empty()) {
      out->done_ = true;
      unregister_temporary(out->slot_);
    }
  }
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  if (!failure.empty()) throw InputError(failure);  // the rest are discarded by their destructors
}

}  // namespace kvlab
