"""Kernel tests cross-built for aarch64 and riscv64 and run under qemu-user.

The cross compilers come from Debian (./bazelw installs them); binaries are linked
statically so that qemu needs no target sysroot at run time.
"""

_COMPILERS = {
    "aarch64": ("aarch64-linux-gnu-g++", "qemu-aarch64"),
    "riscv64": ("riscv64-linux-gnu-g++", "qemu-riscv64"),
}

def cross_gtest(name, arch, srcs, copts = []):
    """Builds `srcs` (plus GoogleTest) for `arch` and runs the result under qemu as a test."""
    compiler, qemu = _COMPILERS[arch]
    binary = name + "_bin"
    native.genrule(
        name = binary,
        srcs = srcs + ["@gtest//:sources"],
        outs = [binary],
        cmd = " ".join([
            compiler,
            "-std=c++17 -O2 -static -pthread",
            "-I.",
            "-Iexternal/gtest/googletest/include -Iexternal/gtest/googletest",
        ] + copts + [
            "external/gtest/googletest/src/gtest-all.cc",
            "external/gtest/googletest/src/gtest_main.cc",
            " ".join(["$(location %s)" % s for s in srcs if s.endswith(".cc")]),
            "-o $@",
        ]),
        testonly = True,
    )
    native.sh_test(
        name = name,
        srcs = ["//toolchains:qemu_test.sh"],
        args = [qemu, "$(location :%s)" % binary],
        data = [":" + binary],
        size = "medium",
    )
