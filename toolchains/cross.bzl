"""qemu_test: a test target built for another CPU (through a configuration transition to the
cross toolchains of //toolchains:cross) and run under qemu-user, so that the host's
`bazel test //...` also covers the aarch64 and riscv64 kernels."""

def _cross_impl(settings, attr):
    return {
        "//command_line_option:cpu": attr.arch,
        "//command_line_option:crosstool_top": "//toolchains:cross",
        "//command_line_option:host_crosstool_top": "@bazel_tools//tools/cpp:toolchain",
    }

_cross = transition(
    implementation = _cross_impl,
    inputs = [],
    outputs = [
        "//command_line_option:cpu",
        "//command_line_option:crosstool_top",
        "//command_line_option:host_crosstool_top",
    ],
)

_QEMU = {
    "aarch64": "qemu-aarch64",
    "riscv64": "qemu-riscv64",
}

def _qemu_test_impl(ctx):
    binary = ctx.attr.binary[0][DefaultInfo].files_to_run.executable
    script = ctx.actions.declare_file(ctx.label.name + ".sh")
    env = " ".join(["%s=%s" % (k, v) for k, v in ctx.attr.test_env.items()])
    ctx.actions.write(
        script,
        content = "#!/usr/bin/env bash\nexec env {env} {runner} {qemu} {args} {binary} \"$@\"\n".format(
            env = env,
            runner = ctx.file._runner.short_path,
            qemu = _QEMU[ctx.attr.arch],
            args = " ".join(ctx.attr.qemu_args),
            binary = binary.short_path,
        ),
        is_executable = True,
    )
    runfiles = ctx.runfiles(files = [binary, ctx.file._runner])
    return [DefaultInfo(executable = script, runfiles = runfiles)]

qemu_test = rule(
    implementation = _qemu_test_impl,
    test = True,
    doc = "Runs `binary`, built for `arch` with //toolchains:cross, under qemu-user.",
    attrs = {
        "arch": attr.string(mandatory = True, values = ["aarch64", "riscv64"]),
        "binary": attr.label(mandatory = True, executable = True, cfg = _cross),
        "qemu_args": attr.string_list(doc = "e.g. the RISC-V CPU model and vector length"),
        "test_env": attr.string_dict(doc = "environment of the test binary"),
        "_runner": attr.label(default = "//toolchains:qemu_test.sh", allow_single_file = True),
        "_allowlist_function_transition": attr.label(
            default = "@bazel_tools//tools/allowlists/function_transition_allowlist",
        ),
    },
)
