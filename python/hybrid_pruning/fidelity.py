"""How closely a reduced model follows the original on the probe inputs, and the guard that
refuses a written model which does not follow it closely enough.

A metric suited to each output: a classifier (a 2-D output with several columns) by top-1
agreement and KL divergence (of its probabilities, or of the softmax of its logits); any other
output (dense maps, regression, embeddings) by its relative RMS error ||y' - y|| / ||y||.

The guard holds a classifier to both. KL is the one the search leans on: it moves with every
change of the outputs, where top-1 agreement on a few hundred probes moves in steps of one
probe, and a search held by agreement alone keeps taking steps that leave every probe's top-1
in place while pushing the outputs further away (the greedy refinement did exactly that;
real accuracy followed KL, not agreement: benchmarks/results/fidelity_proxy.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np


def kl_divergence(reference: np.ndarray, out: np.ndarray) -> float | None:
    """Mean KL(reference || out) over the batch when the outputs are probability
    distributions (rows of a 2-D output summing to 1), else None. Rows are normalised
    first: an int8 model's quantized probabilities sum to 1 only within its steps, and KL
    against a row that does not is no divergence (it came out negative)."""
    if reference.ndim == 2 and np.all(reference >= 0) and np.allclose(reference.sum(1), 1,
                                                                        atol=1e-3):
        p, q = (np.clip(x.astype(np.float64), 1e-7, None) for x in (reference, out))
        p, q = p / p.sum(axis=1, keepdims=True), q / q.sum(axis=1, keepdims=True)
        return float(np.mean(np.sum(p * np.log(p / q), axis=1)))
    return None


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classifier_kl(reference: np.ndarray, out: np.ndarray) -> float:
    """kl_divergence of a classifier's probabilities, or of the softmax of its logits when its
    rows are not distributions."""
    kl = kl_divergence(reference, out)
    if kl is None:
        kl = kl_divergence(_softmax(reference), _softmax(out))
    return float(kl)


def is_classifier(reference: np.ndarray) -> bool:
    return reference.ndim == 2 and reference.shape[1] > 1


def _one(reference: np.ndarray, out: np.ndarray) -> dict:
    out = out.reshape(reference.shape)
    ref64, d = reference.astype(np.float64), (out - reference).astype(np.float64)
    scale = max(float(np.abs(reference).max()), 1e-12)
    result = {
        "max_abs_output_error_relative": float(np.abs(d).max() / scale),
        "relative_error": float(np.sqrt(np.sum(d * d) / max(np.sum(ref64 * ref64), 1e-30))),
    }
    if is_classifier(reference):
        result["top1_agreement"] = float(np.mean(out.argmax(1) == reference.argmax(1)))
        result["kl_divergence"] = classifier_kl(reference, out)
    return result


def as_list(outputs) -> list[np.ndarray]:
    return [np.asarray(o) for o in outputs] if isinstance(outputs, (list, tuple)) else [
        np.asarray(outputs)]


def compare(reference, out) -> dict:
    """Metrics of one output, or of several: then the worst of each metric over the outputs
    (and each output's own under "outputs")."""
    refs, outs = as_list(reference), as_list(out)
    if len(refs) != len(outs):
        raise ValueError(f"{len(outs)} outputs, expected {len(refs)}")
    each = [_one(r, o) for r, o in zip(refs, outs)]
    if len(each) == 1:
        return each[0]
    worst = {}
    for m in each:
        for k, v in m.items():
            better_high = k == "top1_agreement"
            if k not in worst or (v < worst[k] if better_high else v > worst[k]):
                worst[k] = v
    # Relative error judges only the outputs that are not classifiers.
    dense = [m["relative_error"] for m, r in zip(each, refs) if not is_classifier(r)]
    worst["relative_error"] = max(dense) if dense else 0.0
    worst["outputs"] = each
    return worst


def classifier_outputs(reference) -> bool:
    return any(is_classifier(r) for r in as_list(reference))


def dense_outputs(reference) -> bool:
    return any(not is_classifier(r) for r in as_list(reference))


# The defaults: the demo within 0.5 pt of its top-1 and the ResNet-style model within 1 pt,
# measured over every candidate their searches judged (benchmarks/results/fidelity_proxy.md)
# and at the end points of the co-design benchmark (codesign.md; faster kernels move the
# search's end point further along the guard, where a KL of 0.15 has cost the demo 0.89 pt).
# The agreement floor depends on the probes: on 'bn' probes (matched to the model's own
# BatchNorm statistics) KL tracks real loss closely enough to lean on; on synthetic images the
# same KL cost the BatchNorm-free demo several times the top-1 (same file), so there the
# earlier guard, agreement >= 0.9, stays in force.
AUTO = "auto"
DEFAULT_AGREEMENT = {"bn": 0.8}
FALLBACK_AGREEMENT = 0.9
DEFAULT_KL = 0.12


def default_agreement(probe_kind: str) -> float:
    return DEFAULT_AGREEMENT.get(probe_kind, FALLBACK_AGREEMENT)


@dataclasses.dataclass
class Guard:
    """What the written model must keep, on the probes, relative to the original."""

    # classifier outputs: top-1 agreement (AUTO: by probe kind, see resolve)
    min_agreement: float | str | None = AUTO
    max_kl: float | None = DEFAULT_KL  # classifier outputs: KL divergence
    max_relative_error: float | None = 0.1  # other outputs: relative RMS error
    # The flags that set these, named in the message of a miss.
    agreement_flag: str = "--guard_agreement"
    kl_flag: str = "--guard_kl"
    error_flag: str = "--guard_output_error"

    def resolve(self, probe_kind: str) -> "Guard":
        """This guard with AUTO replaced by the default for probes of this kind."""
        if self.min_agreement != AUTO:
            return self
        return dataclasses.replace(self, min_agreement=default_agreement(probe_kind))

    def miss(self, reference, fid: dict) -> str | None:
        """None when `fid` meets the guard, else what is missed, by how much, and the flag
        that relaxes it."""
        if self.min_agreement == AUTO:
            raise ValueError("Guard.resolve(probe kind) first: the agreement floor is AUTO")
        misses = []
        if classifier_outputs(reference):
            a = fid.get("top1_agreement")
            if self.min_agreement is not None and a is not None and a < self.min_agreement:
                misses.append(f"top-1 agreement with the original on the probes is {a:.3f}, "
                              f"below {self.min_agreement:.3f} ({self.agreement_flag})")
            kl = fid.get("kl_divergence")
            if self.max_kl is not None and kl is not None and kl > self.max_kl:
                misses.append(f"KL divergence from the original on the probes is {kl:.4f}, "
                              f"above {self.max_kl:.4f} ({self.kl_flag})")
        if dense_outputs(reference):
            e = fid.get("relative_error")
            if self.max_relative_error is not None and e is not None and (
                    e > self.max_relative_error):
                misses.append(f"relative output error on the probes is {e:.3f}, above "
                              f"{self.max_relative_error:.3f} ({self.error_flag})")
        return "; ".join(misses) or None
