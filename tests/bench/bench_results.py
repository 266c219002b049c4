"""What every benchmark's results file starts and ends with: the machine that measured, and
writing the file (atomically, relative to where `bazel run` was called)."""

from __future__ import annotations

import datetime
import os
import platform


def machine() -> str:
    """'Machine: <CPU model>, <n> vCPUs, <vector ISA>; <date>.'"""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        text = ""
    cpu = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    isa = ("AVX-512" if " avx512f" in text else "AVX2, no AVX-512" if " avx2" in text
           else platform.machine())
    return f"Machine: {cpu}, {os.cpu_count()} vCPUs, {isa}; {datetime.date.today().isoformat()}."


def emit(lines: list[str], output: str | None) -> None:
    """Prints the results and writes them to `output` (if given)."""
    from hybrid_pruning import io

    text = "\n".join(lines) + "\n"
    print(text)
    if output:
        io.write_bytes_atomic(io.user_path(output), text.encode())
