// Test helpers for absl::Status.
#ifndef ATTN_TESTS_TESTING_STATUS_MATCHERS_H_
#define ATTN_TESTS_TESTING_STATUS_MATCHERS_H_

#include <initializer_list>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace attn::testing {

// Success when `s` has `code` and its message contains every one of `needles`.
inline ::testing::AssertionResult HasError(const absl::Status& s, absl::StatusCode code,
                                           std::initializer_list<absl::string_view> needles) {
  if (s.code() != code) {
    return ::testing::AssertionFailure()
           << "expected code " << absl::StatusCodeToString(code) << ", got " << s;
  }
  for (absl::string_view n : needles) {
    if (!absl::StrContains(s.message(), n)) {
      return ::testing::AssertionFailure()
             << "message \"" << s.message() << "\" does not contain \"" << n << "\"";
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace attn::testing

#endif  // ATTN_TESTS_TESTING_STATUS_MATCHERS_H_
