"""Cross C++ toolchains from Debian packages (installed by ./bazelw), for Bazel 4's
--crosstool_top/--cpu selection.

aarch64: Debian's GCC 12 cross compiler. riscv64: clang-16, because Debian's riscv64 GCC 12 has
no RVV intrinsics; clang finds the GCC cross sysroot, headers and linker by itself. Executables
are linked statically so that qemu-user runs them without a target sysroot.
"""

load("@bazel_tools//tools/build_defs/cc:action_names.bzl", "ACTION_NAMES")
load(
    "@bazel_tools//tools/cpp:cc_toolchain_config_lib.bzl",
    "feature",
    "flag_group",
    "flag_set",
    "tool_path",
)

_COMPILE = [
    ACTION_NAMES.assemble,
    ACTION_NAMES.preprocess_assemble,
    ACTION_NAMES.c_compile,
    ACTION_NAMES.cpp_compile,
    ACTION_NAMES.cpp_header_parsing,
    ACTION_NAMES.cpp_module_compile,
]

_LINK = [
    ACTION_NAMES.cpp_link_executable,
    ACTION_NAMES.cpp_link_dynamic_library,
    ACTION_NAMES.cpp_link_nodeps_dynamic_library,
]

def _flags(name, actions, flags):
    return feature(
        name = name,
        enabled = True,
        flag_sets = [flag_set(actions = actions, flag_groups = [flag_group(flags = flags)])],
    )

def _impl(ctx):
    tools = ctx.attr.tools
    tool_paths = [tool_path(name = n, path = tools.get(n, "/bin/false")) for n in [
        "gcc",
        "cpp",
        "ar",
        "ld",
        "nm",
        "objdump",
        "strip",
        "gcov",
    ]]
    features = [
        _flags("default_compile_flags", _COMPILE, ctx.attr.compile_flags + [
            "-fPIC",
            "-Wall",
            "-no-canonical-prefixes",
            "-fno-canonical-system-headers" if ctx.attr.compiler == "gcc" else "-Wno-unused-command-line-argument",
        ]),
        _flags("default_link_flags", _LINK, ctx.attr.compile_flags + [
            "-lstdc++",
            "-lm",
            "-pthread",
        ]),
        _flags("static_executables", [ACTION_NAMES.cpp_link_executable], ["-static"]),
        feature(name = "supports_pic", enabled = True),
        feature(name = "opt"),
        feature(name = "dbg"),
    ]
    return cc_common.create_cc_toolchain_config_info(
        ctx = ctx,
        features = features,
        cxx_builtin_include_directories = ctx.attr.include_directories,
        toolchain_identifier = ctx.attr.cpu + "-linux-gnu",
        host_system_name = "x86_64-linux-gnu",
        target_system_name = ctx.attr.cpu + "-linux-gnu",
        target_cpu = ctx.attr.cpu,
        target_libc = "glibc",
        compiler = ctx.attr.compiler,
        abi_version = "unknown",
        abi_libc_version = "unknown",
        tool_paths = tool_paths,
    )

cc_toolchain_config = rule(
    implementation = _impl,
    attrs = {
        "cpu": attr.string(mandatory = True),
        "compiler": attr.string(mandatory = True),
        "tools": attr.string_dict(mandatory = True),
        "compile_flags": attr.string_list(),
        "include_directories": attr.string_list(),
    },
    provides = [CcToolchainConfigInfo],
)
