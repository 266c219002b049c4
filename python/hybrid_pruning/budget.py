"""One budget for the whole network, split across layers and techniques.

The user gives either a cost target (a fraction of the original MACs) or a fidelity target
on the probes (top-1 agreement with the original, or KL divergence). For every layer we
tabulate candidate levels of the two per-weight/per-activation techniques (weight sparsity
with re-fit, activation-threshold quantile), each with its measured local output error, and
measure what that error does to the network output: the KL on probes with the layer pruned
alone, at a few of its levels, fitted as damage = a * error^p per layer. A layer's level
then trades removed MACs (or seconds on the target) against that predicted damage; one
multiplier lambda prices damage for all layers, and it is bisected until the target is met.
Cheap, measured removals go first wherever they are.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
from absl import logging

from hybrid_pruning import fidelity, graph, statistics
from hybrid_pruning.techniques import activation_pruning, weight_pruning

SPARSITIES = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
QUANTILES = (0.0, 0.2, 0.4, 0.6, 0.75, 0.9)
_SENSITIVITY_NOISE = 0.1


@dataclasses.dataclass
class Level:
    kernel: np.ndarray  # folded [K, out_c]
    weight_error: float
    sparsity: float
    thresholds: np.ndarray | None
    activation_error: float
    activation_sparsity: float


@dataclasses.dataclass
class LayerTable:
    layer: graph.PrunableLayer
    pruner: weight_pruning.LayerPruner
    macs: int
    sensitivity: float  # predicted damage at relative output error 1 ...
    weights: list  # [(kernel, err, sparsity, block size)] per level
    activations: list  # [(thresholds, err, sparsity)] per QUANTILES (one entry for Dense)
    # Latency objective: seconds of level (i, j) on the target, in place of MACs; and the
    # builtin kernel's, which the unpruned level beats where our op is faster even dense.
    seconds: np.ndarray | None = None
    builtin_seconds: float | None = None
    exponent: float = 2.0  # ... and its growth: damage = sensitivity * error^exponent

    def best(self, lam: float) -> tuple[int, int]:
        """Indices (weight level, activation level) maximising what is saved (MACs, or
        seconds on the target) - lam * damage."""
        ws = np.array([w[2] for w in self.weights])
        asp = np.array([a[2] for a in self.activations])
        if self.seconds is not None:
            saved = self.seconds[0, 0] - self.seconds
        else:
            saved = self.macs * (1 - np.outer(1 - ws, 1 - asp))
            saved[0, [a[0] is None for a in self.activations]] = 0.0  # stays a builtin op
        score = saved - lam * self.damage()
        i, j = np.unravel_index(np.argmax(score), score.shape)
        return int(i), int(j)

    def damage(self) -> np.ndarray:
        """[weight level, activation level] predicted output damage, from the two errors'
        total (they are about orthogonal: one changes weights, the other inputs)."""
        we = np.array([w[1] for w in self.weights]) ** 2
        ae = np.array([a[1] for a in self.activations]) ** 2
        return self.sensitivity * (we[:, None] + ae[None, :]) ** (self.exponent / 2)

    def effective_macs(self, i: int, j: int) -> float:
        """Zeros are skipped only by our op: an untouched layer stays a dense builtin op."""
        if i == 0 and self.activations[j][0] is None:
            return float(self.macs)
        return self.macs * (1 - self.weights[i][2]) * (1 - self.activations[j][2])


def _seconds(profile, pl: graph.PrunableLayer, weights: list, acts: list
             ) -> tuple[np.ndarray, float | None]:
    """[weight level, activation level] seconds on the target, and the builtin kernel's: each
    level runs the faster of ours and the builtin (which gains nothing from zeros, so the
    optimiser will not pay fidelity for them). The unpruned level too: a kernel of ours may
    beat the builtin on a layer it runs poorly even with nothing pruned (an AMX CPU's
    XNNPACK on 32 channels, docs/int8.md)."""
    from hybrid_pruning import targets

    out = np.zeros((len(weights), len(acts)))
    if pl.kind != "conv2d":
        return out, None
    shape = targets.conv_shape(pl)
    dense = profile.builtin(shape)
    for i, (_, _, sparsity, block) in enumerate(weights):
        for j, (_, _, activation_sparsity) in enumerate(acts):
            out[i, j] = min(dense, profile.ours(shape, sparsity, block, activation_sparsity))
    return out, dense


def _damage(reference: list, out) -> float:
    total = 0.0
    for r, o in zip(reference, fidelity.as_list(out)):
        kl = fidelity.kl_divergence(r, o)
        # Not a probability output: relative squared error plays the same role.
        total += kl if kl is not None else float(
            np.sum((o - r) ** 2) / max(np.sum(r.astype(np.float64) ** 2), 1e-30))
    return total


def _predictor(model, probes, stepwise=None):
    """The model's outputs on the probes with the weights it has now: from the input, or
    from where `stepwise` (statistics.Stepwise) stands."""
    if stepwise is not None:
        return stepwise.outputs
    return lambda: model.predict(probes, batch_size=statistics.predict_batch(model), verbose=0)


def _sensitivity(model, pl: graph.PrunableLayer, pruner, probes, reference, seed: int,
                 stepwise=None) -> float:
    """Output damage (KL on probes) per unit of relative error^2 at this layer's output, from
    random weight noise: the fallback where pruning's own damage is too small to fit."""
    st = pruner.stats
    out_c = pruner.w2.shape[1]
    sigma = _SENSITIVITY_NOISE * np.sqrt(st.energy / max(out_c * st.cov.trace(), 1e-30))
    noise = np.random.default_rng(seed).normal(0, sigma, pruner.w2.shape)
    with _restored(pl):
        pl.set_folded((pruner.w2 + noise).reshape(pruner.shape).astype(np.float32))
        out = _predictor(model, probes, stepwise)()
    return max(_damage(reference, out), 1e-12) / _SENSITIVITY_NOISE ** 2


@contextlib.contextmanager
def _restored(pl: graph.PrunableLayer):
    """Puts a layer's weights, its BatchNorm's and its folded shift back on exit."""
    bn = pl.batch_norm
    saved = pl.layer.get_weights(), pl.shift.copy(), None if bn is None else bn.get_weights()
    try:
        yield
    finally:
        pl.layer.set_weights(saved[0])
        pl.shift = saved[1]
        if bn is not None:
            bn.set_weights(saved[2])


def damage_alone(model, pl: graph.PrunableLayer, pruner, kernel: np.ndarray, err: float,
                 probes, reference, stepwise=None) -> float:
    """The output damage on the probes with only this layer at this level (kernel, error:
    one of its table's weight levels); the layer is put back after. `stepwise`: a
    statistics.Stepwise standing at this layer's input."""
    r = pruner.result(kernel, err)
    with _restored(pl):
        pl.set_folded(r.kernel, r.bias_delta)
        out = _predictor(model, probes, stepwise)()
    return _damage(reference, out)


# The relative errors at which a layer's damage is measured (the nearest of its levels).
_CALIBRATION_ERRORS = (0.15, 0.35, 0.6)
# Measured damage below this is rounding, not a trend to fit.
_MIN_FITTED_DAMAGE = 1e-5


def _calibrate(model, pl: graph.PrunableLayer, pruner, weights: list, probes, reference,
               seed: int, stepwise=None) -> tuple[float, float]:
    """(a, p) of damage = a * error^p for this layer: the KL on probes measured with the
    layer pruned alone at up to three of its levels. Weight noise of the same size predicts
    it poorly: pruning's damage grows faster than error^2, by a different amount per layer
    (benchmarks/results/fidelity_proxy.md, "Damage model")."""
    errors = np.array([w[1] for w in weights])
    picked = sorted({int(np.argmin(np.abs(errors - e))) for e in _CALIBRATION_ERRORS
                     if errors.max() > 0.5 * e})
    points = []
    for i in picked:
        if errors[i] <= 0:
            continue
        damage = damage_alone(model, pl, pruner, weights[i][0], float(errors[i]), probes,
                              reference, stepwise)
        if damage > _MIN_FITTED_DAMAGE:
            points.append((np.log(errors[i]), np.log(damage)))
    if not points:
        return _sensitivity(model, pl, pruner, probes, reference, seed, stepwise), 2.0
    x, y = np.array(points).T
    p = float(np.clip(np.polyfit(x, y, 1)[0], 1.0, 5.0)) if len(points) > 1 else 2.0
    return float(np.exp(np.mean(y - p * x))), p


def tabulate(model, layers: list[graph.PrunableLayer], inputs: list[np.ndarray],
             probes: np.ndarray, reference: list, block_size: int = 1, progress=None,
             max_sparsity: float = 0.99, block_sizes: tuple[int, ...] | None = None,
             latency: bool = False, activations: bool = True,
             input_scaled: bool = True, input_groups: bool = False,
             stepwise=None) -> list[LayerTable]:
    """Every layer's candidate levels with their re-fitted errors, and its damage model: the
    target-independent half of the search (choose() prices it for one target). `latency`:
    Dense layers stay dense (their builtin kernel gains nothing from zeros); `activations`:
    offer activation thresholds on convs (where some target's kernel skips zeros);
    `input_scaled`: weight magnitudes in output units, `input_groups`: blocks along input
    channels (weight_pruning.LayerPruner); `stepwise`: a statistics.Stepwise of the unpruned
    model to reuse (else one is made where memory allows)."""
    tables = []
    # Damage is measured with one layer changed at a time, in order: from that layer on.
    if stepwise is None:
        stepwise = statistics.Stepwise.within_budget(model, layers, probes)
    else:
        stepwise.restart()
    for seed, (pl, x) in enumerate(zip(layers, inputs)):
        if stepwise is not None:
            stepwise.inputs(seed)
        pruner = weight_pruning.LayerPruner(pl, x, block_size if pl.kind == "conv2d" else 1,
                                            input_scaled=input_scaled,
                                            input_groups=input_groups)
        sparsities = SPARSITIES if not latency or pl.kind == "conv2d" else SPARSITIES[:1]
        blocks = (block_sizes or (block_size,)) if pl.kind == "conv2d" else (1,)
        levels = [(s, b) for b in blocks for s in sparsities
                  if s <= max_sparsity and (s > 0 or b == blocks[0])]
        weights = [(k, e, float(np.mean(k == 0)), b)
                   for (s, b) in levels for k, e in [pruner.evaluate(s, b)]]
        if pl.kind == "conv2d" and activations:
            th = activation_pruning.LayerThresholder(pl, x)
            acts = [th.evaluate(q) for q in QUANTILES]
        else:
            acts = [(None, 0.0, 0.0)]
        if len(weights) > 1:
            sens, exponent = _calibrate(model, pl, pruner, weights, probes, reference, seed,
                                        stepwise)
        elif len(acts) > 1:
            sens, exponent = _sensitivity(model, pl, pruner, probes, reference, seed,
                                          stepwise), 2.0
        else:
            sens, exponent = 1.0, 2.0
        tables.append(LayerTable(pl, pruner, pl.macs, sens, weights, acts, exponent=exponent))
        if progress is not None:
            progress.update(1)
    return tables


def allocate(model, layers: list[graph.PrunableLayer], inputs: list[np.ndarray],
             probes: np.ndarray, reference: list, evaluate_fidelity,
             target_macs: float | None = None, min_agreement: float | None = None,
             max_kl: float | None = None, block_size: int = 1, progress=None,
             accept=None, profile=None, max_sparsity: float = 0.99,
             block_sizes: tuple[int, ...] | None = None, input_scaled: bool = True
             ) -> tuple[list[weight_pruning.WeightPruningResult],
                        list[activation_pruning.ActivationPruningResult], dict]:
    """tabulate() then choose(), for one target."""
    tables = tabulate(model, layers, inputs, probes, reference, block_size, progress,
                      max_sparsity, block_sizes, latency=profile is not None,
                      activations=profile is None or profile.activation_pays,
                      input_scaled=input_scaled)
    return choose(model, tables, evaluate_fidelity, target_macs, min_agreement, max_kl,
                  accept, profile)


def _refine(tables: list[LayerTable], choice: list, fidelity_ok, trials: int
            ) -> tuple[list, int]:
    """Greedy steps past the bisection, each judged by the real fidelity check. One price
    of damage for all layers stops the bisection at the first layer whose step breaks the
    guard, which can leave slack: each layer is offered its gentlest faster level (least
    predicted damage among the levels that save time), best saving per predicted damage
    first, and keeps it if the guard still holds; rounds repeat from the new choice until
    one keeps nothing. Then exchanges: one layer gives back the little time that frees the
    most predicted damage, another takes its gentlest level saving more than that (_exchanges);
    the first that the guard accepts is kept and forward rounds resume (a misjudged layer's damage, e.g. a
    last conv taken to 95 % for a few microseconds, otherwise holds the whole budget). Each
    kept move lowers the predicted time; `trials` checks in all. Returns the choice and the
    moves kept."""
    kept, rejected = 0, set()
    while trials > 0:
        offers = []
        for n, (t, current) in enumerate(zip(tables, choice)):
            if t.seconds is None:
                continue
            saved = t.seconds[current] - t.seconds
            damage = t.damage()
            extra = np.where(saved > 0, damage - damage[current], np.inf)
            level = tuple(int(v) for v in np.unravel_index(np.argmin(extra), extra.shape))
            if np.isfinite(extra[level]) and (n, level) not in rejected:
                offers.append((float(saved[level]) / max(float(extra[level]), 1e-30), n, level))
        kept_before = kept
        for _, n, level in sorted(offers, reverse=True)[:trials]:
            trials -= 1
            trial = list(choice)
            trial[n] = level
            ok = fidelity_ok(trial)
            logging.info("refine: layer %d %s -> %s %s", n, choice[n], level,
                         "kept" if ok else "rejected")
            if ok:
                choice, kept = trial, kept + 1
            else:
                rejected.add((n, level))
        if kept > kept_before:
            continue
        for _, a, back, n, level in _exchanges(tables, choice, rejected):
            if trials <= 0:
                break
            trials -= 1
            trial = list(choice)
            trial[a], trial[n] = back, level
            ok = fidelity_ok(trial)
            logging.info("refine: exchange layer %d %s -> %s, layer %d %s -> %s %s", a,
                         choice[a], back, n, choice[n], level, "kept" if ok else "rejected")
            if ok:
                choice, kept = trial, kept + 1
                break
            rejected.add((a, back, n, level))
        if kept == kept_before:
            break
    return choice, kept


def _exchanges(tables: list[LayerTable], choice: list, rejected: set) -> list:
    """(rank, layer giving back, its level, layer taking, its level), best first: the
    giver's slower level frees the most predicted damage per second lost; the taker's is its
    gentlest level saving more than that loss; ranked by net seconds saved per net predicted
    damage, as the forward steps are (the guard, not the prediction, decides)."""
    damages = [t.damage() for t in tables]
    backs = []
    for a, (t, current) in enumerate(zip(tables, choice)):
        if t.seconds is None:
            continue
        lost = t.seconds - t.seconds[current]
        freed = damages[a][current] - damages[a]
        ratio = np.where((lost >= 0) & (freed > 0), freed / np.maximum(lost, 1e-12), -np.inf)
        level = tuple(int(v) for v in np.unravel_index(np.argmax(ratio), ratio.shape))
        if np.isfinite(ratio[level]):
            backs.append((a, level, float(lost[level]), float(freed[level])))
    out = []
    for a, back, lost, freed in backs:
        for n, (t, current) in enumerate(zip(tables, choice)):
            if n == a or t.seconds is None:
                continue
            saved = t.seconds[current] - t.seconds
            extra = np.where(saved > lost, damages[n] - damages[n][current], np.inf)
            level = tuple(int(v) for v in np.unravel_index(np.argmin(extra), extra.shape))
            if np.isfinite(extra[level]) and (a, back, n, level) not in rejected:
                net = float(saved[level]) - lost
                out.append((net / max(float(extra[level]) - freed, 1e-30), a, back, n, level))
    return sorted(out, reverse=True)


class Snapshot:
    """A model's weights and its layers' folded shifts, to put back."""

    def __init__(self, model, tables: list[LayerTable]):
        self.model, self.tables = model, tables
        self.weights = model.get_weights()
        self.shifts = [t.layer.shift.copy() for t in tables]

    def restore(self) -> None:
        self.model.set_weights(self.weights)
        for t, shift in zip(self.tables, self.shifts):
            t.layer.shift = shift.copy()


def apply_levels(tables: list[LayerTable], choice, refit=None) -> None:
    """Writes each layer's chosen weight level (`choice[k] = (weight level, activation
    level)`; 0 is unpruned) into a model restored to its unpruned weights, and re-fits the
    chosen layers in order (weight_pruning.SequentialRefit)."""
    for t, (i, _) in zip(tables, choice):
        kernel, err = t.weights[i][:2]
        r = t.pruner.result(kernel, err)
        t.layer.set_folded(r.kernel, r.bias_delta)
    if refit is not None:
        level = {t.layer.name: i for t, (i, _) in zip(tables, choice)}
        refit.apply([level.get(pl.name) for pl in refit.layers])


def choose(model, tables: list[LayerTable], evaluate_fidelity,
           target_macs: float | None = None, min_agreement: float | None = None,
           max_kl: float | None = None, accept=None, profile=None, refit=None,
           refine: int = 0
           ) -> tuple[list[weight_pruning.WeightPruningResult],
                      list[activation_pruning.ActivationPruningResult], dict]:
    """Chooses every layer's levels for the target, applies the weights to the model, and
    returns the per-layer results plus a summary of the search.

    `evaluate_fidelity(thresholds_by_layer)` builds the current model and returns its
    fidelity dict on the probes. The target is `target_macs`, or a fidelity target:
    `min_agreement`/`max_kl`, or any `accept(fidelity dict) -> bool`. With a `profile`
    (targets.py) the objective is the target's latency instead of MACs: a conv's level is
    priced as the faster of the builtin dense kernel (unpruned) and our op at that weight
    sparsity, block size and (where the target's kernel skips zeros) activation sparsity.
    `refit` (weight_pruning.SequentialRefit, taken on the unpruned model) re-fits every
    candidate in order before its fidelity is judged, and the result. `refine`: with a
    fidelity target, up to this many greedy single-layer steps after the bisection (_refine)."""
    for t in tables:
        t.seconds, t.builtin_seconds = _seconds(profile, t.layer, t.weights, t.activations) \
            if profile is not None else (None, None)
    total = sum(t.macs for t in tables)

    def choose(lam):
        return [t.best(lam) for t in tables]

    snapshot = Snapshot(model, tables)

    def apply(choice):
        apply_levels(tables, choice, refit)

    def restore():
        snapshot.restore()

    def fidelity_ok(choice):
        apply(choice)
        fid = evaluate_fidelity({t.layer.name: t.activations[j][0]
                                 for t, (_, j) in zip(tables, choice)})
        restore()
        if accept is not None:
            return bool(accept(fid))
        ok = True
        if min_agreement is not None:
            ok &= fid.get("top1_agreement", 1.0) >= min_agreement
        if max_kl is not None:
            ok &= fid.get("kl_divergence", 0.0) <= max_kl
        return ok

    if profile is not None:  # damage is priced in seconds of the whole model
        total = sum(float(t.seconds[0, 0]) for t in tables if t.seconds is not None)
    # Damage is priced at lambda = total MACs * 10^mu; larger mu removes less. Effective MACs
    # grow and fidelity improves with mu, so both targets are a bisection on mu.
    lo, hi = -12.0, 12.0
    for _ in range(30 if target_macs is not None else 10):
        mid = 0.5 * (lo + hi)
        choice = choose(total * 10 ** mid)
        if target_macs is not None:
            macs = sum(t.effective_macs(i, j) for t, (i, j) in zip(tables, choice))
            lo, hi = (mid, hi) if macs <= target_macs else (lo, mid)
        else:
            lo, hi = (lo, mid) if fidelity_ok(choice) else (mid, hi)
    mu = lo if target_macs is not None else hi
    choice = choose(total * 10 ** mu)
    kept = 0
    if target_macs is None and refine > 0:
        choice, kept = _refine(tables, choice, fidelity_ok, refine)
    apply(choice)
    summary = {"lambda": total * 10 ** mu,
               "levels": {t.layer.name: [int(i), int(j)] for t, (i, j) in zip(tables, choice)},
               "damage_model": {t.layer.name: {"a": t.sensitivity, "p": t.exponent}
                                for t in tables},
               "refined_layers": kept}
    if profile is not None:
        from hybrid_pruning import targets

        summary["objective"] = "latency"
        # What the chosen level takes (a profile priced over several thread counts reports
        # its first one's seconds: `latency`), not what it was priced at.
        latency = getattr(profile, "latency", None)
        summary["predicted_seconds"] = {
            t.layer.name: {"builtin": float(t.builtin_seconds), "chosen": float(
                t.seconds[i, j] if latency is None or t.seconds[i, j] >= t.builtin_seconds
                else latency(targets.conv_shape(t.layer), t.weights[i][2], t.weights[i][3]))}
            for t, (i, j) in zip(tables, choice) if t.layer.kind == "conv2d"}
        # Unpruned layers priced faster on our op than on the builtin: written as our op.
        summary["unpruned_ours"] = sorted(
            t.layer.name for t, (i, j) in zip(tables, choice)
            if t.layer.kind == "conv2d" and i == j == 0 and t.seconds[0, 0] < t.builtin_seconds)
    logging.info("budget: lambda %.3g, levels %s", summary["lambda"], choice)
    weights_out, acts_out = [], []
    for t, (i, j) in zip(tables, choice):
        kernel, err, _, block = t.weights[i]
        weights_out.append(t.pruner.result(kernel, err))
        weights_out[-1].block_size = block
        thr, aerr, asp = t.activations[j]
        acts_out.append(activation_pruning.ActivationPruningResult(
            t.layer.name, thr, asp, t.activations[0][2], aerr))
    return weights_out, acts_out, summary
