"""The fidelity metrics and the guard: KL for logit and probability classifiers alike, and a
guard that names what a model misses."""

import numpy as np
from absl.testing import absltest

from hybrid_pruning import fidelity


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


class FidelityTest(absltest.TestCase):

    def setUp(self):
        rng = np.random.default_rng(0)
        self.logits = rng.normal(0, 3, (64, 10)).astype(np.float32)
        self.moved = self.logits + rng.normal(0, 1, self.logits.shape).astype(np.float32)

    def test_logits_are_judged_by_the_kl_of_their_softmax(self):
        logits = fidelity.compare(self.logits, self.moved)
        probabilities = fidelity.compare(_softmax(self.logits), _softmax(self.moved))
        self.assertGreater(logits["kl_divergence"], 0.01)
        self.assertAlmostEqual(logits["kl_divergence"], probabilities["kl_divergence"],
                               places=4)
        self.assertEqual(logits["top1_agreement"], probabilities["top1_agreement"])
        self.assertEqual(fidelity.compare(self.logits, self.logits)["kl_divergence"], 0.0)

    def test_kl_of_quantized_probabilities_is_never_negative(self):
        # An int8 softmax: steps of 1/256 from -128, whose rows need not sum to 1.
        p = _softmax(self.logits)
        q = np.round(p * 256) / 256 + 1 / 256
        self.assertGreater(float(np.abs(q.sum(1) - 1).max()), 0.01)
        self.assertGreaterEqual(fidelity.compare(p, q)["kl_divergence"], 0.0)

    def test_kl_grows_where_agreement_stays(self):
        # Outputs pushed towards the runner-up without overtaking it: every top-1 stays,
        # KL does not (what a search held by agreement alone can exploit).
        top2 = np.sort(self.logits, 1)[:, -2:]
        gap = (top2[:, 1] - top2[:, 0])[:, None]
        pushed = self.logits.copy()
        pushed[np.arange(64), self.logits.argmax(1)] -= 0.9 * gap[:, 0]
        fid = fidelity.compare(self.logits, pushed)
        self.assertEqual(fid["top1_agreement"], 1.0)
        self.assertGreater(fid["kl_divergence"], 0.0)
        guard = fidelity.Guard(min_agreement=0.9, max_kl=fid["kl_divergence"] / 2)
        miss = guard.miss(self.logits, fid)
        self.assertIn("KL divergence", miss)
        self.assertIn("--guard_kl", miss)
        self.assertNotIn("top-1 agreement", miss)

    def test_default_guard_holds_classifiers_to_both(self):
        with self.assertRaisesRegex(ValueError, "resolve"):
            fidelity.Guard().miss(self.logits, fidelity.compare(self.logits, self.logits))
        # KL binds on probes matched to the model's BatchNorm statistics; elsewhere the
        # agreement floor stays where it was.
        bn, image = fidelity.Guard().resolve("bn"), fidelity.Guard().resolve("image")
        self.assertEqual(bn.min_agreement, 0.8)
        self.assertEqual(image.min_agreement, fidelity.FALLBACK_AGREEMENT)
        self.assertEqual(fidelity.Guard(min_agreement=0.7).resolve("bn").min_agreement, 0.7)
        for guard in (bn, image):
            self.assertEqual(guard.max_kl, fidelity.DEFAULT_KL)
            self.assertIsNone(guard.miss(self.logits,
                                         fidelity.compare(self.logits, self.logits)))
            miss = guard.miss(self.logits, fidelity.compare(self.logits, -self.logits))
            self.assertIn("--guard_agreement", miss)
            self.assertIn("--guard_kl", miss)

    def test_dense_outputs_have_no_kl(self):
        maps = np.random.default_rng(1).normal(size=(8, 4, 4, 3))
        fid = fidelity.compare(maps, maps * 1.2)
        self.assertNotIn("kl_divergence", fid)
        self.assertAlmostEqual(fid["relative_error"], 0.2, places=6)
        guard = fidelity.Guard().resolve("image")
        self.assertIsNone(guard.miss(maps, fidelity.compare(maps, maps * 1.05)))
        self.assertIn("--guard_output_error", guard.miss(maps, fid))


if __name__ == "__main__":
    absltest.main()
