// The Highway targets every kernel source compiles for. Include it first in
// a Highway source, before hwy/foreach_target.h, so that all of them compile
// the same set (their dispatch tables share one chosen target, and the tests
// iterate CompiledTargets() of core/attention_kernels.h).
#ifndef ATTN_CORE_KERNEL_TARGETS_H_
#define ATTN_CORE_KERNEL_TARGETS_H_

// clang-format off: these must precede every Highway header.
// SVE vectors are sizeless and cannot live in the arrays the register tiles
// use; on Arm the kernels run on NEON (128-bit, 32 registers).
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128)
#endif
// The portable target (EMU128) on every architecture, so its code is tested
// everywhere: by default Highway leaves it out where the baseline already has
// SIMD (NEON on aarch64). On x86 the set is the same either way.
#ifndef HWY_COMPILE_ALL_ATTAINABLE
#define HWY_COMPILE_ALL_ATTAINABLE
#endif
// AVX3_DL (Ice Lake and later, AMD Zen 4) is what AVX-512 servers of today
// dispatch to; Highway leaves it out unless asked.
#ifndef HWY_WANT_AVX3_DL
#define HWY_WANT_AVX3_DL
#endif

// clang-format on

#endif  // ATTN_CORE_KERNEL_TARGETS_H_
