"""Target profiles: names and options, the modelled latencies' structure (what the optimiser
relies on), and one run writing a model per target."""

from __future__ import annotations

import numpy as np
from absl.testing import absltest

from hybrid_pruning import io, pipeline, runtime, targets

_3X3 = targets.ConvShape(32, 32, 64, 64, 3, 3, (1, 1), (1, 1), "SAME")
_1X1 = targets.ConvShape(28, 28, 128, 128, 1, 1, (1, 1), (1, 1), "SAME")
_STRIDED = targets.ConvShape(33, 31, 16, 24, 3, 3, (2, 2), (1, 1), "VALID")


class ParseTest(absltest.TestCase):

    def test_names_and_options(self):
        self.assertEqual(targets.parse_target("riscv64-rvv:vlen=512"), ("riscv64-rvv", 512))
        self.assertEqual(targets.parse_target("arm64-neon"), ("arm64-neon", None))
        self.assertEqual(targets.file_tag("riscv64-rvv:vlen=512"), "riscv64-rvv-vlen512")
        for bad, says in (("arm64", "unknown target 'arm64'"),
                          ("arm64-neon:vlen=128", "only riscv64-rvv"),
                          ("riscv64-rvv:vlen=100", "power of two")):
            with self.assertRaisesRegex(ValueError, says):
                targets.parse_target(bad)

    def test_x86_targets_this_cpu_has_are_measured_with_that_kernel(self):
        isa = targets.host_isa()
        if not isa:
            self.skipTest("not an x86 machine with AVX2")
        profile = targets.profile_for("x86_64-avx2")
        self.assertFalse(profile.modelled)
        self.assertEqual(profile.kernel, "avx2")
        self.assertTrue(targets.profile_for("arm64-neon").modelled)


class ModelledProfileTest(absltest.TestCase):

    def test_every_target_prices_every_shape(self):
        for name in targets.CORES:
            p = targets.ModelledProfile(name)
            for shape in (_3X3, _1X1, _STRIDED):
                dense = p.builtin(shape)
                times = [p.ours(shape, s, 1) for s in (0.0, 0.5, 0.8, 0.95)]
                self.assertGreater(dense, 0, name)
                # Fewer nonzeros, less time; and never below the fixed costs.
                self.assertEqual(times, sorted(times, reverse=True), (name, shape))
                self.assertGreater(times[-1], 0)

    def test_blocks_reuse_input_loads_on_vector_targets(self):
        for name in ("x86_64-avx512", "arm64-neon", "riscv64-rvv"):
            p = targets.ModelledProfile(name)
            self.assertLess(p.ours(_3X3, 0.8, 4), p.ours(_3X3, 0.8, 1), name)
            # Zero inputs cost the vector kernels as much as any others.
            self.assertEqual(p.ours(_3X3, 0.8, 1, 0.5), p.ours(_3X3, 0.8, 1), name)
            self.assertFalse(p.activation_pays)

    def test_zero_inputs_pay_on_the_scalar_reference(self):
        p = targets.ModelledProfile("generic")
        self.assertTrue(p.activation_pays)
        self.assertLess(p.ours(_3X3, 0.5, 1, 0.5), p.ours(_3X3, 0.5, 1, 0.0))
        # Dense weights and inputs: the reference kernel is slower than a dense conv.
        self.assertGreater(p.ours(_3X3, 0.0, 1), p.builtin(_3X3))

    def test_longer_vectors_take_longer_per_instruction_and_tile_more(self):
        short = targets.ModelledProfile("riscv64-rvv", vlen=128)
        long = targets.ModelledProfile("riscv64-rvv", vlen=512)
        self.assertEqual((short.kernel.tile, long.kernel.tile), (16, 64))
        self.assertEqual(short.name, "riscv64-rvv:vlen=128")
        self.assertGreater(long.core.fma, short.core.fma)


class SeveralTargetsTest(absltest.TestCase):

    def test_one_model_per_target_in_one_run(self):
        model = io.load_keras_model(str(io.DEMO_MODEL))
        # The sequential re-fit is tested on its own (weight_pruning_test); off, for time.
        config = pipeline.PruneConfig(quiet=True, targets=("host", "arm64-neon", "generic"),
                                      probe_count=64, sequential_refit=False)
        results = pipeline.compress_targets(model, config)
        self.assertEqual(list(results), ["host", "arm64-neon", "generic"])
        for name, result in results.items():
            rep = result.report
            self.assertEqual(rep["target"]["name"], name)
            self.assertEqual(rep["target"]["latency"],
                             "measured on this machine" if name == "host" else "modelled")
            self.assertIsNone(result.fidelity_miss, name)
            # The written model runs in the interpreter with our delegate.
            x = np.random.default_rng(0).uniform(0, 1, (4, 16, 16, 1)).astype(np.float32)
            self.assertEqual(runtime.predict_all(result.tflite, x)[0].shape, (4, 10))
            self.assertLessEqual(rep["totals"]["predicted_conv_seconds_after"],
                                 rep["totals"]["predicted_conv_seconds_original"])
        self.assertIn("latency_on_host", results["host"].report)
        self.assertNotIn("latency_on_host", results["arm64-neon"].report)
        # Only the scalar target's kernel turns zero inputs into time.
        for name in ("host", "arm64-neon"):
            self.assertFalse(any(r["activation_thresholds"]
                                 for r in results[name].report["layers"]), name)
        # Each target's model is its own: the later targets did not change the earlier one.
        self.assertIsNot(results["host"].model, results["generic"].model)


if __name__ == "__main__":
    absltest.main()
