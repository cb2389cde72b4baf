// FUZZ_CHECK: a finding. Prints where and why, then aborts so libFuzzer
// saves the input (fuzzers run with -fno-sanitize-recover; abort is a crash).
#ifndef ATTN_TESTS_FUZZ_FUZZ_CHECK_H_
#define ATTN_TESTS_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>
#include <string>

#define FUZZ_CHECK(cond, msg)                                                                 \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s: %s\n", __FILE__, __LINE__, #cond, \
                   std::string(msg).c_str());                                                 \
      std::abort();                                                                           \
    }                                                                                         \
  } while (0)

#endif  // ATTN_TESTS_FUZZ_FUZZ_CHECK_H_
