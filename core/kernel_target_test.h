// For the tests of the Highway kernels: a fixture whose tests run once per
// target compiled in (INSTANTIATE_TEST_SUITE_P(Targets, Suite,
// ::testing::ValuesIn(CompiledTargets()), TargetParamName)).
#ifndef ATTN_CORE_KERNEL_TARGET_TEST_H_
#define ATTN_CORE_KERNEL_TARGET_TEST_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/attention_kernels.h"
#include "gtest/gtest.h"

namespace attn::core::kernels {

// Every test below runs once per Highway target compiled in, with every
// kernel forced onto that target; targets this CPU does not support (or
// oneDNN's ISA limit excludes) skip, so the list of tests is the same on
// every machine and under ONEDNN_MAX_CPU_ISA.
class TargetTest : public ::testing::TestWithParam<int64_t> {
 protected:
  void SetUp() override {
    const std::vector<int64_t> supported = SupportedTargets();
    if (std::find(supported.begin(), supported.end(), GetParam()) == supported.end()) {
      GTEST_SKIP() << TargetName(GetParam())
                   << " is not supported here (CPU or ONEDNN_MAX_CPU_ISA)";
    }
    scope_ = std::make_unique<ScopedTargetForTest>(GetParam());
    ASSERT_STREQ(TargetName(), TargetName(GetParam()));
  }
  void TearDown() override { scope_.reset(); }

 private:
  std::unique_ptr<ScopedTargetForTest> scope_;
};

inline std::string TargetParamName(const ::testing::TestParamInfo<int64_t>& info) {
  return TargetName(info.param);
}

}  // namespace attn::core::kernels

#endif  // ATTN_CORE_KERNEL_TARGET_TEST_H_
