"""What every benchmark's results file starts and ends with: the machine that measured, and
writing the file (atomically, relative to where `bazel run` was called)."""

from __future__ import annotations

import datetime
import os
import platform


def machine() -> str:
    """'Machine: <CPU model>, <n> vCPUs, <vector ISA>; <date>.'"""
    from hybrid_pruning import targets

    text = targets.cpuinfo()
    isa = ("AVX-512" if " avx512f" in text else "AVX2, no AVX-512" if " avx2" in text
           else platform.machine())
    return (f"Machine: {targets.cpu_model()}, {os.cpu_count()} vCPUs, {isa}; "
            f"{datetime.date.today().isoformat()}.")


def emit(lines: list[str], output: str | None) -> None:
    """Prints the results and writes them to `output` (if given)."""
    from hybrid_pruning import io

    text = "\n".join(lines) + "\n"
    print(text)
    if output:
        io.write_bytes_atomic(io.user_path(output), text.encode())
