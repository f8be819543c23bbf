// Running the built programs from end-to-end tests: a program of the build directory with its
// output (stdout and stderr together) and exit code, and a fresh scratch directory.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "gtest/gtest.h"

namespace msa::test {

struct CommandResult {
  int exit_code;
  std::string output;
};

// Runs MSA_BINARY_DIR/program with `args` (shell syntax) and waits for it.
inline CommandResult run_program(const std::string& program, const std::string& args) {
  FILE* pipe =
      popen((std::string(MSA_BINARY_DIR) + "/" + program + " " + args + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  return {WEXITSTATUS(pclose(pipe)), out};
}

// An empty directory `name` under the test's temporary directory (emptied if it exists).
inline std::string fresh_dir(const std::string& name) {
  const std::string dir = std::string(::testing::TempDir()) + "/" + name;
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  return dir;
}

}  // namespace msa::test
