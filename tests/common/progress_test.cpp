#include "common/progress.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace fedrad {
namespace {

TEST(Progress, LineShowsBarCountsPercentAndDetail) {
  set_progress_mode(ProgressMode::kOff);  // nothing drawn; line() still renders
  Progress p("test", "indexing /data", 10, "files");
  p.set(5);
  p.set_detail("3 unreadable");
  const std::string line = p.line();
  EXPECT_NE(line.find("indexing /data: [##########..........] 5/10 files  50%"), std::string::npos) << line;
  EXPECT_NE(line.find("3 unreadable"), std::string::npos) << line;
  p.set(10);
  EXPECT_NE(p.line().find("[####################] 10/10 files 100%"), std::string::npos) << p.line();
  p.finish();
  p.finish();  // idempotent
}

TEST(Progress, UnknownTotalShowsCountOnly) {
  set_progress_mode(ProgressMode::kOff);
  Progress p("test", "reading", 0, "files");
  p.advance(3);
  EXPECT_EQ(p.line(), "reading: 3 files");
}

TEST(Progress, AdvanceIsThreadSafe) {
  set_progress_mode(ProgressMode::kOff);
  Progress p("test", "work", 4000);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) p.advance();
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(p.done(), 4000u);
}

TEST(Progress, ModesParseAndDurationsFormat) {
  ProgressMode m = ProgressMode::kOff;
  EXPECT_TRUE(parse_progress_mode("live", &m));
  EXPECT_EQ(m, ProgressMode::kLive);
  EXPECT_TRUE(parse_progress_mode("plain", &m));
  EXPECT_EQ(m, ProgressMode::kPlain);
  EXPECT_FALSE(parse_progress_mode("fancy", &m));
  EXPECT_EQ(m, ProgressMode::kPlain);
  EXPECT_EQ(format_duration(5), "5s");
  EXPECT_EQ(format_duration(200), "3m 20s");
  EXPECT_EQ(format_duration(3720), "1h 02m");
  EXPECT_EQ(format_duration(-1), "?");
}

}  // namespace
}  // namespace fedrad
