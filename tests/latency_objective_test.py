"""The default objective: the fastest model on the target whose fidelity meets the guard.

Profiles with known costs check the optimiser's decisions (builtin where ours is slower, blocks
where they pay); the host profile itself is checked for what it measures and caches. Every
model is saved to disk and reloaded first."""

from __future__ import annotations

import os
import tempfile

import numpy as np
from absl.testing import absltest

from hybrid_pruning import (budget, convert, graph, io, op_format, pipeline, targets,
                            tflite_model)

import test_models


class _Profile:
    """Latencies by formula: `ours(sparsity, block, activation_sparsity)` against a builtin
    that costs 1."""

    modelled = True
    name = "formula"

    def __init__(self, ours, activation_pays: bool = False):
        self._ours = ours
        self.activation_pays = activation_pays

    def builtin(self, shape) -> float:
        return 1.0

    def ours(self, shape, sparsity: float, block: int = 1,
             activation_sparsity: float = 0.0) -> float:
        if self.activation_pays:
            return self._ours(sparsity, block, activation_sparsity)
        return self._ours(sparsity, block)


def _saved(model, directory: str):
    path = os.path.join(directory, model.name + ".keras")
    model.save(path)
    return io.load_keras_model(path)


class OptimiserTest(absltest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        cls.model = _saved(test_models.sequential_cnn(), cls.dir)

    def _compress(self, profile):
        # The decisions under test do not depend on the sequential re-fit (tested on its own
        # in weight_pruning_test), which would only add time.
        return pipeline.compress(self.model, pipeline.PruneConfig(
            quiet=True, probe_count=32, profile=profile, measure_latency=False,
            sequential_refit=False))

    def test_keeps_the_builtin_where_ours_is_slower(self):
        result = self._compress(_Profile(lambda s, b: 2.0))
        for row in result.report["layers"]:
            if row["kind"] == "conv2d":
                self.assertEqual(row["weight_sparsity"], 0.0, row)
                self.assertTrue(row["runs_as"].startswith("CONV_2D"), row)
        # Dense layers gain nothing from zeros on the builtin kernel: not pruned either.
        dense = [r for r in result.report["layers"] if r["kind"] == "dense"]
        self.assertEqual([r["weight_sparsity"] for r in dense], [0.0])
        self.assertIsNone(result.fidelity_miss)

    def test_unpruned_layers_run_ours_where_it_is_faster_dense(self):
        # Our op twice as fast as the builtin whatever is pruned (an AMX CPU's tiles on
        # layers XNNPACK runs poorly): nothing is worth pruning, and every conv still runs on
        # our op, unpruned, in both dtypes.
        for dtype in ("float32", "int8"):
            result = pipeline.compress(self.model, pipeline.PruneConfig(
                quiet=True, probe_count=32, profile=_Profile(lambda s, b: 0.5),
                measure_latency=False, sequential_refit=False, dtype=dtype))
            convs = [r for r in result.report["layers"] if r["kind"] == "conv2d"]
            self.assertNotEmpty(convs)
            for row in convs:
                self.assertEqual(row["weight_sparsity"], 0.0, (dtype, row))
                self.assertEqual(row["runs_as"], op_format.OP_NAME, (dtype, row))
            self.assertEqual(_count_hybrid(result.tflite), len(convs), dtype)
            search = result.report["global_budget_search"]
            self.assertEqual(search["unpruned_ours"], sorted(r["layer"] for r in convs))
            totals = result.report["totals"]
            self.assertAlmostEqual(totals["predicted_conv_seconds_after"],
                                   0.5 * totals["predicted_conv_seconds_before"])
            self.assertIsNone(result.fidelity_miss)

    def test_picks_blocks_where_they_pay_and_meets_the_guard(self):
        # Blocks of 4 are five times faster than unstructured sparsity; both beat the
        # builtin only when sparse enough.
        result = self._compress(_Profile(lambda s, b: 2.0 * (1 - s) * (0.2 if b == 4 else 1.0)))
        pruned = [r for r in result.report["layers"]
                  if r["kind"] == "conv2d" and r["weight_sparsity"] > 0]
        self.assertNotEmpty(pruned)
        for row in pruned:
            self.assertEqual(row["block_size"], 4, row)
            self.assertEqual(row["runs_as"], op_format.OP_NAME, row)
        totals = result.report["totals"]
        self.assertLess(totals["predicted_conv_seconds_after"],
                        totals["predicted_conv_seconds_before"])
        # The fidelity the guard judged is that of the written model.
        self.assertIsNone(result.fidelity_miss)
        fid = result.report["fidelity_on_probes"]
        guard = result.report["fidelity_guard"]
        self.assertGreaterEqual(fid["top1_agreement"], guard["min_agreement"])
        self.assertLessEqual(fid["kl_divergence"], guard["max_kl"])
        self.assertEqual(guard["max_kl"], pipeline.fidelity.DEFAULT_KL)


    def test_activation_thresholds_only_where_zeros_pay(self):
        # A scalar target whose kernel skips zero inputs: thresholds cut its time.
        pays = self._compress(_Profile(lambda s, b, a: 2.0 * (1 - s) * (1 - a) + 0.1,
                                       activation_pays=True))
        convs = [r for r in pays.report["layers"] if r["kind"] == "conv2d"]
        self.assertTrue(any(r["activation_thresholds"] for r in convs), convs)
        self.assertIsNone(pays.fidelity_miss)
        # The same costs on a vector target that ignores zero inputs: no thresholds.
        vector = self._compress(_Profile(lambda s, b: 2.0 * (1 - s) + 0.1))
        self.assertFalse(any(r["activation_thresholds"] for r in vector.report["layers"]))


class RefineTest(absltest.TestCase):
    """The greedy steps after the bisection, on tables with known costs and damage."""

    @staticmethod
    def _table(errors, seconds):
        return budget.LayerTable(
            layer=None, pruner=None, macs=0, sensitivity=1.0,
            weights=[(None, e, 0.0, 1) for e in errors], activations=[(None, 0.0, 0.0)],
            seconds=np.array(seconds, dtype=float)[:, None])

    def test_takes_the_gentlest_faster_level_while_the_guard_holds(self):
        # Level 1 of each layer is faster and costs some damage; level 2 faster still.
        tables = [self._table([0.0, 0.1, 0.5], [1.0, 0.6, 0.3]),
                  self._table([0.0, 0.3, 0.6], [1.0, 0.9, 0.2]),
                  self._table([0.0, 0.2, 0.4], [1.0, 1.5, 2.0])]  # never faster
        checked = []

        def fidelity_ok(choice):  # the guard: total damage within 0.05
            checked.append(list(choice))
            return sum(t.damage()[c] for t, c in zip(tables, choice)) <= 0.05

        choice, kept = budget._refine(tables, [(0, 0)] * 3, fidelity_ok, trials=5)
        # Offers: layer 0 -> level 1 (0.4 s for 0.01), layer 1 -> level 1 (0.1 s for 0.09);
        # the first fits, the second would exceed the guard on top of it.
        # A second round offers layer 0 its next level (0.3 s for 0.24): over the guard too.
        # Layer 1's gentlest step failed, so none of its harsher ones is tried.
        # Then exchanges: layer 0 gives its 0.4 s back for layer 1's level 2 (0.8 s, 0.36).
        self.assertEqual(choice, [(1, 0), (0, 0), (0, 0)])
        self.assertEqual(kept, 1)
        self.assertEqual(checked, [[(1, 0), (0, 0), (0, 0)], [(1, 0), (1, 0), (0, 0)],
                                   [(2, 0), (0, 0), (0, 0)], [(0, 0), (2, 0), (0, 0)]])
        # No trials: the bisection's choice as it was.
        self.assertEqual(budget._refine(tables, [(0, 0)] * 3, fidelity_ok, trials=0),
                         ([(0, 0)] * 3, 0))


    def test_exchange_moves_damage_to_where_it_buys_more_time(self):
        # Layer 0 sits at a level that saves 0.1 s for damage 0.04; layer 1's first faster
        # level saves 0.7 s for 0.04 and does not fit on top. Giving back half of layer 0's
        # saving frees 0.03 of damage: layer 1's step then fits, 0.65 s faster in all.
        tables = [self._table([0.0, 0.1, 0.2], [1.0, 0.95, 0.9]),
                  self._table([0.0, 0.2], [1.0, 0.3])]

        def fidelity_ok(choice):
            return sum(t.damage()[c] for t, c in zip(tables, choice)) <= 0.05 + 1e-12

        choice, kept = budget._refine(tables, [(2, 0), (0, 0)], fidelity_ok, trials=10)
        self.assertEqual(choice, [(1, 0), (1, 0)])
        self.assertEqual(kept, 1)


class _WrongHostProfile(_Profile):
    """A host profile whose table is wrong: our op 100x faster than the builtin at light
    unstructured sparsity (20-30 %) and slower at any other level, so the optimiser puts every
    conv on our op at a level where it really runs slower. (At any level alike, it chose
    levels where the whole model came out as fast as the original, and a noisy measurement
    decided whether anything went back.)"""

    modelled = False

    def __init__(self):
        super().__init__(lambda sparsity, block: 0.01 if block == 1 and 0 < sparsity <= 0.3
                         else 10.0)


class MeasuredFallbackTest(absltest.TestCase):

    def test_layers_that_make_the_model_slower_go_back_to_the_builtin(self):
        result = pipeline.compress(io.load_keras_model(str(io.DEMO_MODEL)), pipeline.PruneConfig(
            quiet=True, probe_count=32, profile=_WrongHostProfile(), num_threads=1,
            sequential_refit=False, refine_steps=0))
        rep = result.report
        self.assertIsNone(result.fidelity_miss)
        reverted = rep["global_budget_search"]["measured_fallback"]
        self.assertNotEqual(reverted, [])
        runs_as = {row["layer"]: row["runs_as"] for row in rep["layers"]}
        for name in reverted:
            self.assertEqual(runs_as[name], pipeline.SLOWER)
        # What the report says runs where is what the written model holds.
        hybrid = sum(v == op_format.OP_NAME for v in runs_as.values())
        self.assertEqual(hybrid, _count_hybrid(result.tflite))
        # Layers back on the builtin kernel gain nothing from zeros: their unpruned weights
        # are back (the guard holds with them: they only bring the model closer).
        self.assertTrue(rep["global_budget_search"]["measured_fallback_unpruned"])
        rows = {row["layer"]: row for row in rep["layers"]}
        layers = {pl.name: pl for pl in graph.prunable_layers(result.model)[0]}
        for name in reverted:
            self.assertEqual(rows[name]["weight_sparsity"], 0.0, name)
            self.assertEqual(np.count_nonzero(layers[name].kernel), layers[name].kernel.size)


    def test_candidates_are_timed_in_the_same_rounds_as_one_original(self):
        # The fallback compares the model as it stands with a trial: both against one
        # timing of the original, per thread count.
        model = io.load_keras_model(str(io.DEMO_MODEL))
        flat = convert.to_tflite(model)
        probes = np.random.default_rng(0).uniform(0, 1, (2, *model.inputs[0].shape[1:]))
        rows = pipeline._measure_side_by_side(flat, [flat, flat], probes.astype(np.float32),
                                              (1, 2))
        self.assertLen(rows, 2)
        for row in rows:
            self.assertEqual([r["threads"] for r in row["by_threads"]], [1, 2])
            self.assertGreater(row["pruned_seconds"], 0)
        for a, b in zip(rows[0]["by_threads"], rows[1]["by_threads"]):
            self.assertEqual(a["original_seconds"], b["original_seconds"])
            self.assertAlmostEqual(b["speedup"], b["original_seconds"] / b["pruned_seconds"])


def _count_hybrid(tflite: bytes) -> int:
    model = tflite_model.read(tflite)
    return sum(1 for op in model.subgraphs[0].operators
               if tflite_model.custom_code(model, op) == op_format.OP_NAME)


class HostProfileTest(absltest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        self.shape = targets.ConvShape(8, 8, 16, 16, 3, 3, (1, 1), (1, 1), "SAME")

    def test_measures_once_then_reads_the_cache(self):
        first = targets.HostProfile(cache_dir=self.dir)
        dense = first.builtin(self.shape)
        self.assertGreater(dense, 0.0)
        # Interpolated between grid points, and faster when sparser on our op.
        self.assertLess(first.ours(self.shape, 0.95), first.ours(self.shape, 0.0))
        self.assertEqual(first.measured, 1)
        second = targets.HostProfile(cache_dir=self.dir)
        self.assertEqual(second.builtin(self.shape), dense)
        self.assertEqual(second.measured, 0)

    def test_a_changed_kernel_library_is_measured_again(self):
        targets.HostProfile(cache_dir=self.dir).builtin(self.shape)
        saved = targets._library_digest
        targets._library_digest = lambda: "0123456789abcdef"
        try:
            rebuilt = targets.HostProfile(cache_dir=self.dir)
            rebuilt.builtin(self.shape)
            self.assertEqual(rebuilt.measured, 1)
        finally:
            targets._library_digest = saved


    def test_a_noisy_grid_point_never_makes_more_zeros_slower(self):
        table = targets.HostProfile(cache_dir=self.dir)._tables[0]
        # The grid point at 70 % was timed while something else ran.
        table._table[f"{self.shape.key()}-b1"] = {
            "builtin": 2e-4, "ours": [4e-4, 2e-4, 3e-4, 1e-4, 8e-5, 6e-5, 5e-5]}
        self.assertAlmostEqual(table.ours(self.shape, 0.7, 1), 2e-4)
        self.assertLess(table.ours(self.shape, 0.75, 1), 2e-4)
        self.assertAlmostEqual(table.ours(self.shape, 0.8, 1), 1e-4)

    def test_several_thread_counts_price_the_worst_ratio(self):
        profile = targets.HostProfile((1, 2), cache_dir=self.dir)
        self.assertEqual(profile.threads, (1, 2))
        key = f"{self.shape.key()}-b1"
        grid = len(targets.SPARSITY_GRID)
        # One thread: ours at half the builtin's time. Two: the builtin twice as fast, ours
        # not faster (a layer too small for a second worker), so ours is slower there.
        profile._tables[0]._table[key] = {"builtin": 2e-4, "ours": [1e-4] * grid}
        profile._tables[1]._table[key] = {"builtin": 1e-4, "ours": [1.2e-4] * grid}
        self.assertAlmostEqual(profile.builtin(self.shape), 2e-4)
        self.assertAlmostEqual(profile.ours(self.shape, 0.8), 2.4e-4)
        # Faster at both counts: priced at the worse of its two ratios.
        profile._tables[1]._table[key] = {"builtin": 1e-4, "ours": [0.8e-4] * grid}
        self.assertAlmostEqual(profile.ours(self.shape, 0.8), 1.6e-4)
        self.assertEqual(profile.measured, 0)
        single = targets.HostProfile(1, cache_dir=self.dir)  # one count: its own time
        single._tables[0]._table[key] = {"builtin": 2e-4, "ours": [1e-4] * grid}
        self.assertAlmostEqual(single.ours(self.shape, 0.8), 1e-4)

    def test_thread_counts(self):
        cores = len(os.sched_getaffinity(0))
        self.assertEqual(targets.thread_counts("1,all"), (1, cores) if cores > 1 else (1,))
        self.assertEqual(targets.thread_counts(2), (2,))
        self.assertEqual(targets.thread_counts((1, 1, 4)), (1, 4))
        for bad in ("0", "two", ""):
            with self.assertRaisesRegex(ValueError, "thread count"):
                targets.thread_counts(bad)


if __name__ == "__main__":
    absltest.main()
