"""Retraining the demo model with its committed seed reproduces its test accuracy within a
point (the committed metrics file is the record of that model)."""

from __future__ import annotations

import json
import pathlib

from absl.testing import absltest, parameterized

import train_demo

_DEMO = pathlib.Path(__file__).parent.parent / "python" / "demo"


class TrainReproducibleTest(parameterized.TestCase):

    @parameterized.parameters(("digits_cnn.json", True), ("digits_cnn_nobn.json", False))
    def test_retraining_matches_committed_accuracy(self, metrics: str, batch_norm: bool):
        committed = json.loads((_DEMO / metrics).read_text())
        model, accuracy = train_demo.train(committed["seed"], committed["epochs"], batch_norm)
        self.assertEqual(model.count_params(), committed["parameters"])
        self.assertGreaterEqual(committed["parameters"], 100_000)
        self.assertAlmostEqual(accuracy, committed["test_accuracy"], delta=0.01)


if __name__ == "__main__":
    absltest.main()
