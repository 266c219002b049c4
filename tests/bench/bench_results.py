"""What every benchmark's results file starts and ends with: the machine that measured, and
writing the file (atomically, relative to where `bazel run` was called)."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys


def machine() -> str:
    """'Machine: <CPU model>, <n> vCPUs, <vector ISA>; <date>.'"""
    from hybrid_pruning import targets

    text = targets.cpuinfo()
    isa = ("AVX-512" if " avx512f" in text else "AVX2, no AVX-512" if " avx2" in text
           else platform.machine())
    if " amx_int8" in text:  # XNNPACK's int8 convs, and ours, run on its tiles
        isa += " + AMX-INT8"
    return (f"Machine: {targets.cpu_model()}, {os.cpu_count()} vCPUs, {isa}; "
            f"{datetime.date.today().isoformat()}.")


def command(target: str) -> str:
    """'Command: `./bazelw run //tests/bench:<target> -- <this run's flags>`', paths under the
    directory bazel was called from written as $PWD."""
    cwd = os.environ.get("BUILD_WORKING_DIRECTORY", os.getcwd())
    args = " ".join(shlex.quote(a).replace(cwd + "/", "$PWD/") for a in sys.argv[1:])
    return f"Command: `./bazelw run //tests/bench:{target} -- {args}`".replace(" -- `", "`")


def emit(lines: list[str], output: str | None) -> None:
    """Prints the results and writes them to `output` (if given)."""
    from hybrid_pruning import io

    text = "\n".join(lines) + "\n"
    print(text)
    if output:
        io.write_bytes_atomic(io.user_path(output), text.encode())
