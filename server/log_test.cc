#include "server/log.h"

#include <sstream>

#include "gtest/gtest.h"

namespace attn::server {
namespace {

TEST(LoggerTest, FormatsKeyValuePairsAndQuotesWhatWouldSplit) {
  EXPECT_EQ(
      Logger::Format("T", LogLevel::kWarning, "request_failed",
                     {{"model", "default"},
                      {"message", "query.shape[2]: expected 512, got 256"},
                      {"quote", "say \"hi\""},
                      {"empty", ""}}),
      "ts=T level=warning event=request_failed model=default "
      "message=\"query.shape[2]: expected 512, got 256\" quote=\"say \\\"hi\\\"\" empty=\"\"\n");
}

TEST(LoggerTest, DropsLinesBelowItsLevel) {
  std::ostringstream out;
  Logger::Options options;
  options.level = LogLevel::kWarning;
  options.out = &out;
  Logger log(options);
  log.Log(LogLevel::kInfo, "quiet", {});
  log.Log(LogLevel::kError, "loud", {{"k", "v"}});
  const std::string text = out.str();
  EXPECT_EQ(text.find("event=quiet"), std::string::npos);
  EXPECT_NE(text.find(" level=error event=loud k=v\n"), std::string::npos) << text;
  EXPECT_EQ(text.rfind("ts=", 0), 0u);
  EXPECT_FALSE(log.access_log());
}

TEST(LoggerTest, AccessLogNeedsInfo) {
  Logger::Options options;
  options.access_log = true;
  EXPECT_TRUE(Logger(options).access_log());
  options.level = LogLevel::kWarning;
  EXPECT_FALSE(Logger(options).access_log());
}

TEST(LoggerTest, ParsesLevelNames) {
  EXPECT_EQ(*ParseLogLevel("WARNING"), LogLevel::kWarning);
  EXPECT_EQ(*ParseLogLevel("off"), LogLevel::kOff);
  EXPECT_EQ(ParseLogLevel("loud").status().message(),
            "log level: expected debug, info, warning, error or off, got 'loud'");
}

}  // namespace
}  // namespace attn::server
