"""Importing hybrid_pruning leaves BLAS one thread (OpenBLAS's busy-waiting threads made
prune ten times slower beside another busy process), unless the user set its thread count."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl.testing import absltest

_REPORT = ("import json, threadpoolctl; print(json.dumps(sorted("
           "(i['filepath'], i['num_threads']) for i in threadpoolctl.threadpool_info() "
           "if i['user_api'] == 'blas')))")


def _blas_threads(code: str, **env: str) -> list[tuple[str, int]]:
    environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    environ.update(env, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code + "\n" + _REPORT], env=environ,
                         capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


class BlasThreadsTest(absltest.TestCase):

    def test_control_uses_every_core(self):
        # What the limit is against: without it OpenBLAS takes several threads.
        threads = _blas_threads("import numpy")
        self.assertTrue(threads)
        if len(os.sched_getaffinity(0)) > 1:
            self.assertGreater(min(n for _, n in threads), 1)

    def test_one_thread_whatever_was_imported_first(self):
        for code in ("import hybrid_pruning, numpy, scipy.linalg",
                     "import numpy, hybrid_pruning, scipy.linalg",
                     "import numpy, scipy.linalg, hybrid_pruning"):
            threads = _blas_threads(code)
            self.assertGreaterEqual(len(threads), 1, code)
            self.assertEqual({n for _, n in threads}, {1}, code)

    def test_the_users_setting_stands(self):
        cores = len(os.sched_getaffinity(0))  # OpenBLAS takes no more than the cores
        threads = _blas_threads("import numpy, hybrid_pruning",
                                OPENBLAS_NUM_THREADS=str(cores))
        self.assertEqual({n for _, n in threads}, {cores})


if __name__ == "__main__":
    absltest.main()
