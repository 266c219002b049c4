"""A VGG-16-style model without BatchNorm (14.7 M parameters, 224x224, dense output map; random
weights: this is about memory, not fidelity) goes through `prune` with the default 128 probes,
as a user runs it, within 8 GB of peak memory. The time it takes is recorded by
tests/bench/architectures_bench.py, not asserted here. It runs the per-layer budgets: the
latency objective's level tables and interpreter checks take far longer on a model this size
(see docs/design_history.md, "Big models"), too long for CI."""

from __future__ import annotations

import os
import pathlib
import resource
import subprocess
import tempfile

from absl.testing import absltest

import test_models

PRUNE = pathlib.Path(__file__).parent.parent / "python" / "prune"


class ScaleTest(absltest.TestCase):

    def test_vgg16_at_224_within_8_gb(self):
        work = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        model_path = os.path.join(work, "vgg16_edges.keras")
        test_models.vgg16_edges().save(model_path)
        env = dict(os.environ, HYBRID_PRUNING_USER_CWD=work)
        proc = subprocess.run(
            [str(PRUNE), f"--model={model_path}", "--output=out.tflite", "--report=r.json",
             "--objective=budgets", "--quiet"], capture_output=True, text=True, env=env, cwd=work, timeout=1800,
            stdin=subprocess.DEVNULL)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        self.assertLess(peak, 8e9, f"peak resident memory {peak / 1e9:.2f} GB")
        self.assertGreater(os.path.getsize(os.path.join(work, "out.tflite")), 0)


if __name__ == "__main__":
    absltest.main()
