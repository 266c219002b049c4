"""Points Bazel's Python toolchain at the venv that ./bazelw pinned and installed.

./bazelw exports HYBRID_PRUNING_VENV; every py_binary/py_test then runs with that venv's
interpreter, so tensorflow and ai-edge-litert resolve to the locked versions.
"""

_BUILD = """
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "py3_runtime",
    interpreter_path = "{python}",
    python_version = "PY3",
    stub_shebang = "#!{python}",
)

py_runtime_pair(
    name = "py_runtime_pair",
    py3_runtime = ":py3_runtime",
)

toolchain(
    name = "py_toolchain",
    toolchain = ":py_runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
"""

def _python_venv_impl(ctx):
    venv = ctx.os.environ.get("HYBRID_PRUNING_VENV", "")
    if not venv:
        fail("HYBRID_PRUNING_VENV is not set: run Bazel through ./bazelw, which installs the venv.")
    python = venv + "/bin/python3"
    if not ctx.path(python).exists:
        fail("HYBRID_PRUNING_VENV=%s has no bin/python3: rerun ./bazelw to reinstall it." % venv)
    ctx.file("BUILD", _BUILD.format(python = python))

python_venv = repository_rule(
    implementation = _python_venv_impl,
    environ = ["HYBRID_PRUNING_VENV"],
    local = True,
)
