// Running the built programs from end-to-end tests: a program of the build directory with its
// output (stdout and stderr together) and exit code, and a fresh scratch directory.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace msa::test {

struct CommandResult {
  int exit_code;
  std::string output;
};

// Runs a shell command line and waits for it (exit code -1 when it did not exit normally).
inline CommandResult run_command(const std::string& command) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// `s` as one shell word: a checkout path with a space in it broke every command line.
inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// MSA_BINARY_DIR/program as one shell word.
inline std::string program_path(const std::string& program) {
  return shell_quote(std::string(MSA_BINARY_DIR) + "/" + program);
}

// Runs MSA_BINARY_DIR/program with `args` (shell syntax) and waits for it.
inline CommandResult run_program(const std::string& program, const std::string& args) {
  return run_command(program_path(program) + " " + args);
}

// This test process is an MPI singleton (tests/test_main.cc): its OMPI_* / PMIX_* / ORTE_*
// variables would make an mpirun launched from it think it runs inside that job, and fail.
inline void forget_own_mpi_job() {
  std::vector<std::string> names;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string var(*e);
    const std::string name = var.substr(0, var.find('='));
    for (const char* prefix : {"OMPI_", "PMIX_", "ORTE_"})
      if (name.rfind(prefix, 0) == 0) names.push_back(name);
  }
  for (const std::string& name : names) ::unsetenv(name.c_str());
}

// MSA_BINARY_DIR/program on `ranks` processes under mpirun (oversubscribed: CI has 2 cores).
inline CommandResult mpirun_program(int ranks, const std::string& program,
                                    const std::string& args) {
  forget_own_mpi_job();
  return run_command(
      "OMPI_MCA_rmaps_base_oversubscribe=1 mpirun --oversubscribe --allow-run-as-root -np " +
      std::to_string(ranks) + " " + program_path(program) + " " + args);
}

// An empty directory `name` under the test's temporary directory (emptied if it exists).
inline std::string fresh_dir(const std::string& name) {
  const std::string dir = std::string(::testing::TempDir()) + "/" + name;
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  return dir;
}

}  // namespace msa::test
