// Temporary files beside an output: unique and exclusive, moved into place only whole, and a file
// that must not be replaced is not, also when it appears while the temporary one is written.
#include "core/file_publish.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/command.h"

namespace msa {
namespace {

using ::testing::HasSubstr;
using msa::test::fresh_dir;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

bool exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

TEST(FilePublishTest, TemporaryNamesAreUniqueAndNeverAnExistingFile) {
  const std::string dir = fresh_dir("publish_unique");
  const std::string out = dir + "/out.h5";
  std::ofstream(out + ".tmp") << "mine";
  auto a = create_temp_beside(out), b = create_temp_beside(out);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_THAT(*a, HasSubstr(out + ".tmp."));
  EXPECT_EQ(read_file(out + ".tmp"), "mine");
  auto missing = create_temp_beside(dir + "/no/such/dir/out.h5");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("no/such/dir/out.h5"));
}

TEST(FilePublishTest, NoReplaceKeepsAFileThatAppearedAndRemovesTheTemporary) {
  const std::string dir = fresh_dir("publish_noreplace");
  const std::string out = dir + "/out.bin";
  auto tmp = create_temp_beside(out);
  ASSERT_TRUE(tmp.ok());
  std::ofstream(*tmp) << "new";
  std::ofstream(out) << "appeared meanwhile";
  const absl::Status s = publish_temp(*tmp, out, /*replace=*/false);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(out));
  EXPECT_EQ(read_file(out), "appeared meanwhile");
  EXPECT_FALSE(exists(*tmp));

  // Into a free name: the temporary file becomes it and is gone under its own name.
  const std::string free_name = dir + "/free.bin";
  tmp = create_temp_beside(free_name);
  ASSERT_TRUE(tmp.ok());
  std::ofstream(*tmp) << "new";
  ASSERT_TRUE(publish_temp(*tmp, free_name, /*replace=*/false).ok());
  EXPECT_EQ(read_file(free_name), "new");
  EXPECT_FALSE(exists(*tmp));
}

// A temporary file made 0600 (mkstemp) kept that mode: a converted checkpoint or exported model was
// unreadable to other users (a serving process under another uid).
TEST(FilePublishTest, PublishedFilesHaveTheModeOfAPlainCreate) {
  const std::string dir = fresh_dir("publish_mode");
  struct UmaskGuard {
    mode_t saved = ::umask(022);
    ~UmaskGuard() { ::umask(saved); }
  } guard;
  const std::string out = dir + "/out.bin";
  auto tmp = create_temp_beside(out);
  ASSERT_TRUE(tmp.ok());
  std::ofstream(*tmp) << "new";
  ASSERT_TRUE(publish_temp(*tmp, out, /*replace=*/false).ok());
  struct stat st;
  ASSERT_EQ(::stat(out.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
}

// A dangling link at the output is an existing name: never followed and replaced.
TEST(FilePublishTest, NoReplaceKeepsADanglingLink) {
  const std::string dir = fresh_dir("publish_link");
  const std::string out = dir + "/out.bin";
  ASSERT_EQ(::symlink("nowhere/x.bin", out.c_str()), 0);
  auto tmp = create_temp_beside(out);
  ASSERT_TRUE(tmp.ok());
  bool published = true;
  const absl::Status s = publish_temp(*tmp, out, /*replace=*/false, &published);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_FALSE(published);
  char target[64] = {};
  ASSERT_GT(::readlink(out.c_str(), target, sizeof(target) - 1), 0);
  EXPECT_STREQ(target, "nowhere/x.bin");
  EXPECT_FALSE(exists(*tmp));
}

TEST(FilePublishTest, ReplaceTakesThePlaceOfTheOldFile) {
  const std::string dir = fresh_dir("publish_replace");
  const std::string out = dir + "/out.bin";
  std::ofstream(out) << "old";
  auto tmp = create_temp_beside(out);
  ASSERT_TRUE(tmp.ok());
  std::ofstream(*tmp) << "new";
  ASSERT_TRUE(publish_temp(*tmp, out, /*replace=*/true).ok());
  EXPECT_EQ(read_file(out), "new");
  EXPECT_FALSE(exists(*tmp));
  EXPECT_EQ(parent_dir(out), dir);
  EXPECT_EQ(parent_dir("bare"), ".");
  EXPECT_EQ(parent_dir("/top"), "/");
}

}  // namespace
}  // namespace msa
