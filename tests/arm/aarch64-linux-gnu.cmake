# CMake toolchain for aarch64 Linux with Debian's cross compiler
# (g++-aarch64-linux-gnu) and the core's arm64 packages unpacked into a
# sysroot folder (tests/arm/run.sh makes it):
#   cmake -DCMAKE_TOOLCHAIN_FILE=tests/arm/aarch64-linux-gnu.cmake \
#         -DATTN_ARM_SYSROOT=/abs/path/to/sysroot -DATTN_CORE_ONLY=ON ...
# The toolchain's own libc and libstdc++ live in /usr/aarch64-linux-gnu. Every
# find_package/find_library looks only in those two trees, never in the host's
# amd64 /usr. Tests run under qemu-aarch64-static (CMAKE_CROSSCOMPILING_EMULATOR),
# so ctest and gtest_discover_tests work as on a native build.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# try_compile projects read this file again: hand them the sysroot too.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES ATTN_ARM_SYSROOT)
if(NOT ATTN_ARM_SYSROOT OR NOT IS_DIRECTORY "${ATTN_ARM_SYSROOT}/usr/lib/aarch64-linux-gnu")
  message(FATAL_ERROR "ATTN_ARM_SYSROOT must name a folder holding the unpacked arm64 packages "
                      "(tests/arm/run.sh makes one), got '${ATTN_ARM_SYSROOT}'")
endif()
set(_attn_arm_libdir "${ATTN_ARM_SYSROOT}/usr/lib/aarch64-linux-gnu")

set(CMAKE_FIND_ROOT_PATH "${ATTN_ARM_SYSROOT}" /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)  # cmake, ninja, protoc-like tools: the host's
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# The linker follows shared libraries' own dependencies (libabsl_* on each
# other) in the sysroot.
set(CMAKE_EXE_LINKER_FLAGS_INIT "-Wl,-rpath-link,${_attn_arm_libdir}")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-Wl,-rpath-link,${_attn_arm_libdir}")

# -L: the guest's dynamic loader, libc, libstdc++ and libgomp come from the
# cross toolchain; LD_LIBRARY_PATH (the guest's): the sysroot's libraries.
find_program(ATTN_QEMU_AARCH64 qemu-aarch64-static REQUIRED)
set(CMAKE_CROSSCOMPILING_EMULATOR
    "${ATTN_QEMU_AARCH64};-L;/usr/aarch64-linux-gnu;-E;LD_LIBRARY_PATH=${_attn_arm_libdir}")
