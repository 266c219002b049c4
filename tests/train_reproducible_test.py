"""Retraining the demo model with its committed seed reproduces its test accuracy within a
point (the committed metrics file is the record of that model)."""

from __future__ import annotations

import json
import pathlib

from absl.testing import absltest

import train_demo

_METRICS = pathlib.Path(__file__).parent.parent / "python" / "demo" / "digits_cnn.json"


class TrainReproducibleTest(absltest.TestCase):

    def test_retraining_matches_committed_accuracy(self):
        committed = json.loads(_METRICS.read_text())
        model, accuracy = train_demo.train(committed["seed"], committed["epochs"])
        self.assertEqual(model.count_params(), committed["parameters"])
        self.assertGreaterEqual(committed["parameters"], 100_000)
        self.assertAlmostEqual(accuracy, committed["test_accuracy"], delta=0.01)


if __name__ == "__main__":
    absltest.main()
