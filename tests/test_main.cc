// Shared GoogleTest main: initializes MPI (every binary links it; single-process tests run as one
// rank) so that MPI and non-MPI tests share one entry point.
#include <mpi.h>

#include <cstdio>

#include "gtest/gtest.h"

namespace {

// Ranks other than 0 print only their failures (to stderr, unbuffered, with the rank): a rank
// whose test body stops on a fatal failure would otherwise leave the others waiting in a
// collective it never joins, and mpirun's abort then shows no reason.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: %s\n%s\n", rank_,
                 r.file_name() ? r.file_name() : "?", r.line_number(),
                 r.fatally_failed() ? "fatal failure" : "failure", r.message());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    // Only rank 0 prints results; other ranks print their failures and set the exit code.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
  int result = RUN_ALL_TESTS();
  int any_failed = 0;
  MPI_Allreduce(&result, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any_failed;
}
