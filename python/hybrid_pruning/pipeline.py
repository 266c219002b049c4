"""The pruning pipeline: Keras model in, LiteRT flatbuffer with our ops out. Data-free.

Order: probes on the original model; channel removal (near-constant, then near-identical
channels), which rebuilds a smaller Keras model; weight pruning with least-squares re-fit;
activation thresholds; conversion; flatbuffer rewrite; a fidelity check in the interpreter.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
from absl import logging

from hybrid_pruning import (budget, convert, fidelity, graph, op_format, probes as probes_lib,
                            report as report_lib, runtime, statistics, targets,
                            tflite_rewrite)
from hybrid_pruning.io import UserError
from hybrid_pruning.techniques import (activation_pruning, channel_merging, constant_channels,
                                       weight_pruning)


@dataclasses.dataclass
class PruneConfig:
    weight_error_budget: float = 0.15  # 0 disables weight pruning
    activation_error_budget: float = 0.15  # 0 disables activation pruning
    constant_error_budget: float = 0.05  # 0 disables near-constant channel folding
    merge_error_budget: float = 0.05  # 0 disables near-identical channel merging
    # A global budget (at most one): when set, weight and activation levels of every layer are
    # chosen together for it (budget.py) instead of by the per-layer budgets above.
    target_macs: float | None = None  # fraction of the original MACs to keep (effective)
    min_agreement: float | None = None  # top-1 agreement with the original on probes
    max_kl: float | None = None  # KL divergence from the original on probes
    # "latency" (default): the fastest model on the target (targets.py) whose fidelity meets
    # the guard; "budgets": the per-layer error budgets above. Channel removal, which pays on
    # every target, runs first either way with its own budgets.
    objective: str = "latency"
    max_sparsity: float = 0.99
    block_size: int = 1
    # Convs whose weight sparsity ends up below this stay builtin CONV_2D (XNNPACK's dense
    # kernel is faster there; their activation thresholds are dropped, which only brings them
    # back towards the original). 0 = every pruned conv runs our op.
    dense_below: float = 0.0
    probe: str = "auto"  # probes.KINDS
    probe_count: int = 128
    input_range: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    # Thread counts the model will run with (targets.thread_counts: "1,all", an int, a tuple):
    # the host profile prices our op at its worst ratio to the builtin over them, and the
    # written model is timed at each.
    num_threads: int | str | tuple[int, ...] = "1,all"
    quiet: bool = False
    input_shape: tuple[int, ...] | None = None  # replaces dynamic input dims (H, W, C)
    # The fidelity guard on the written model (fidelity.Guard): a miss is an error unless
    # the per-layer budgets can be scaled down until it holds (auto_backoff).
    guard: fidelity.Guard = dataclasses.field(default_factory=fidelity.Guard)
    auto_backoff: bool = True
    measure_latency: bool = True  # time the written model against the original, here
    # Latency objective: re-fit the chosen layers in order to the unpruned network's outputs
    # (weight_pruning.SequentialRefit) before each fidelity check.
    sequential_refit: bool = True
    # Latency objective: at most this many greedy single-layer steps after the global search,
    # each checked against the guard (budget._refine); 0 turns them off.
    refine_steps: int = 30
    # What the latency objective prices with: targets.TARGETS names (one output each, the
    # target-independent work done once), or one profile object (tests) that replaces them.
    targets: tuple[str, ...] = ("host",)
    profile: object | None = None
    # "int8": the written model is full-integer int8 (the stock converter's, calibrated on the
    # probes), its pruned convs on our int8 op where it is faster; the latency objective
    # prices int8 kernels, prunes in groups of input channels (the int8 op's unit) and judges
    # speed against the stock int8 conversion of the original.
    dtype: str = "float32"


@dataclasses.dataclass
class PruneResult:
    tflite: bytes
    report: dict
    model: object  # the reduced Keras model (fewer channels, zeros in its kernels)

    @property
    def fidelity_miss(self) -> str | None:
        """What the written model misses of the fidelity guard, or None."""
        return self.report["fidelity_guard"]["miss"]



@dataclasses.dataclass
class Prepared:
    """The target-independent stage (_prepare), shared by every target of a run."""

    model: object  # after channel removal
    layers: list  # graph.PrunableLayer of that model
    inputs: list  # statistics.collect: each layer's sampled inputs on the probes
    removed: dict[str, dict[str, int]]  # producer -> technique -> channels removed
    refused: dict[str, str]  # channel groups left alone, and why
    unjudged: dict[str, int]  # producer -> channels kept: the probes miss their BatchNorm
    tables: list | None  # budget.tabulate under the latency objective, else None
    refit: object | None  # weight_pruning.SequentialRefit, or None


@dataclasses.dataclass
class Outcome:
    """One target's pruned model (_finish); the measured fallback changes it in place."""

    model: object
    layers: list
    weights: list  # one weight_pruning result per layer
    activations: list  # one activation_pruning result per layer
    removed: dict[str, dict[str, int]]
    refused: dict[str, str]
    unjudged: dict[str, int]
    search: dict | None  # the search's summary (budget.choose / allocate), None: budgets
    tflite: bytes
    records: list  # tflite_rewrite records: where each layer runs
    fidelity: dict  # fidelity.compare of the written model on the probes
    # What _unprune restores from: the tables, the unpruned weights, the re-fit.
    unpruned: tuple
    latency: dict | None = None  # the measured fallback's last measurement


def _to_ours(model, layers, thresholds_by_layer: dict, block_size,
             dense_below: float = 0.0, builtin: frozenset = frozenset(),
             flat: bytes | None = None, int8_probes: np.ndarray | None = None,
             unpruned_ours: frozenset = frozenset()):
    """Converts the Keras model (unless `flat` is its conversion) and rewrites its pruned
    convs to our op. `block_size`: one for every layer, or {layer name: block size}.
    `builtin`: layers kept on CONV_2D. `int8_probes`: converts to full-integer int8
    calibrated on them (our int8 op takes no activation thresholds). `unpruned_ours`:
    unpruned layers rewritten all the same (the latency objective priced ours faster)."""
    if flat is None:
        flat = convert.to_tflite(model, "int8" if int8_probes is not None else "float32",
                                 int8_probes)
    names = tflite_rewrite.match_layers(flat, {pl.name: pl.folded_kernel for pl in layers
                                               if pl.kind == "conv2d"})
    thresholds = {i: thresholds_by_layer[n] for i, n in names.items()
                  if thresholds_by_layer.get(n) is not None}
    blocks = {i: block_size.get(n, 1) if isinstance(block_size, dict) else block_size
              for i, n in names.items()}
    # Float: a conv with zeros was pruned. int8 rounding zeros small weights of any conv, so
    # there only convs whose float kernel has zeros (the search pruned them) may change.
    kernels = {pl.name: pl.folded_kernel for pl in layers if pl.kind == "conv2d"}
    dense = {i for i, n in names.items() if n in unpruned_ours and n not in builtin}
    only = dense | {i for i, n in names.items() if n not in builtin and
                    (int8_probes is None or np.any(kernels[n] == 0))}
    return tflite_rewrite.rewrite(flat, block_sizes=blocks,
                                  thresholds=thresholds, layer_names=names,
                                  dense_below=dense_below, only=only, dense_ops=dense)


def _unpruned_ours(search: dict | None) -> frozenset:
    """The unpruned layers the latency objective put on our op (budget.choose)."""
    return frozenset((search or {}).get("unpruned_ours", ()))


def _calibration(config: PruneConfig, probes: np.ndarray) -> np.ndarray | None:
    """What _to_ours calibrates an int8 conversion on: the probes, if the model is int8."""
    return probes if config.dtype == "int8" else None


# Per-layer budgets are scaled by these in turn until the guard holds (0: no pruning).
BACKOFF = (1.0, 0.5, 0.25, 0.1, 0.0)


def compress(model, config: PruneConfig) -> PruneResult:
    """Reduces a copy of `model` (which stays as it is) for the first of config.targets and
    returns the rewritten flatbuffer, with a report. The result may miss the fidelity guard
    (see PruneResult.fidelity_miss); the caller decides whether to write it."""
    return next(iter(compress_targets(model, config).values()))


def compress_targets(model, config: PruneConfig) -> dict[str, PruneResult]:
    """compress() for every target of config.targets: {target: result}. Probes, channel
    removal, statistics and the candidate levels' re-fits are computed once; each target then
    chooses its levels with its own latency profile and is checked against the guard."""
    from tqdm import tqdm

    start = time.time()
    threads = targets.thread_counts(config.num_threads)
    config = dataclasses.replace(config, num_threads=threads[0])  # fidelity checks use one
    original = graph.normalize(model, config.input_shape)
    original_layers, skipped = graph.prunable_layers(original)
    _check_memory(original, original_layers, config)
    before = {pl.name: (pl.kernel.shape[-1], int(pl.kernel.size), pl.macs)
              for pl in original_layers}
    macs_before = {layer.name: graph.layer_macs(layer) for layer in original.layers}
    probes = probes_lib.make_probes(original, config.probe, config.probe_count,
                                    config.input_range, config.seed, progress=not config.quiet)
    kind = probes_lib.resolve(original, config.probe)  # the work model may lose its BNs
    config = dataclasses.replace(config, probe=kind, guard=config.guard.resolve(kind))
    reference = fidelity.as_list(original.predict(
        probes, batch_size=statistics.predict_batch(original), verbose=0))
    # The model to beat: the original as the stock converter writes it in the same dtype.
    original_tflite = convert.to_tflite(original, config.dtype, probes)
    dense_size = len(original_tflite)
    global_budget = _global_budget(config)
    scales = BACKOFF if config.auto_backoff and not global_budget else BACKOFF[:1]
    if config.objective == "latency" and not global_budget:
        try:
            profiles = [config.profile] if config.profile is not None else [
                targets.profile_for(t, threads, config.dtype) for t in config.targets]
        except ValueError as e:
            raise UserError(f"--target: {e}") from e
    else:
        profiles = [None]
    names = [p.name if p is not None else config.targets[0] for p in profiles]
    pending = list(range(len(profiles)))
    attempts: dict[int, list] = {i: [] for i in pending}
    final: dict[int, tuple] = {}
    with tqdm(total=len(original_layers) * 2, desc="pruning", unit="layer",
              disable=config.quiet, leave=False) as bar:
        for scale in scales:
            bar.reset()
            bar.set_description("pruning" if scale == 1 else f"pruning, budgets x{scale:g}")
            work = graph.normalize(model, config.input_shape)
            prepared = _prepare(work, probes, reference, config, scale, bar,
                                [profiles[i] for i in pending])
            work = prepared.model  # channel removal rebuilt it
            several = len(profiles) > 1  # each target starts from the same weights
            for i in list(pending):
                if several:
                    snapshot = (work.get_weights(),
                                [pl.shift.copy() for pl in prepared.layers])
                outcome = _finish(prepared, probes, reference, _scaled(config, scale),
                                  profiles[i], bar, sum(m for _, _, m in before.values()))
                if config.measure_latency and profiles[i] is not None and \
                        not profiles[i].modelled:
                    _measured_fallback(original_tflite, outcome, probes, reference, threads,
                                       config, getattr(profiles[i], "kernel", ""))
                miss = config.guard.miss(reference, outcome.fidelity)
                attempts[i].append({"budget_scale": scale, "fidelity": outcome.fidelity,
                                    "miss": miss})
                if miss is not None:
                    logging.info("%s: budget scale %g misses the fidelity guard: %s",
                                 names[i], scale, miss)
                if miss is None or scale == scales[-1]:
                    report = report_lib.build(config, outcome, before, macs_before, skipped,
                                              dense_size)
                    kept = _copy(work) if several else work
                    final[i] = (outcome, report, scale, miss, kept)
                    pending.remove(i)
                if several:
                    work.set_weights(snapshot[0])
                    for pl, shift in zip(prepared.layers, snapshot[1]):
                        pl.shift = shift
            if not pending:
                break
    results = {}
    for i, (outcome, report, scale, miss, kept) in sorted(final.items()):
        profile = profiles[i]
        report["target"] = {"name": names[i], "latency": "none" if profile is None else
                            "modelled" if profile.modelled else "measured on this machine"}
        if profile is not None and outcome.search is not None:
            # The original's convs (all channels) on the builtin kernel: the baseline.
            report["totals"]["predicted_conv_seconds_original"] = sum(
                profile.builtin(targets.conv_shape(pl)) for pl in original_layers
                if pl.kind == "conv2d")
        report["probes"] = {"kind": probes_lib.resolve(original, config.probe),
                            "count": config.probe_count}
        report["fidelity_guard"] = {**dataclasses.asdict(config.guard), "met": miss is None,
                                    "miss": miss, "budget_scale": scale,
                                    "attempts": attempts[i]}
        if config.measure_latency and (profile is None or not profile.modelled):
            report["latency_on_host"] = outcome.latency or _measure(
                original_tflite, outcome.tflite, probes, threads)
        report["seconds"] = time.time() - start
        results[names[i]] = PruneResult(outcome.tflite, report, kept)
    logging.info("reduced %d layers for %s in %.1f s", len(original_layers), names,
                 time.time() - start)
    return results


def _copy(model):
    """An independent copy of a Keras model (the next target changes the weights)."""
    copy = graph.keras_module(model).models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _check_memory(model, layers, config: PruneConfig) -> None:
    """Refuses, before any work, a run that would not fit in memory (the kernel's OOM killer
    would end it without a word)."""
    need = statistics.planned_bytes(
        model, layers, config.probe_count,
        stepwise=config.objective == "latency" or _global_budget(config))  # budget.tabulate
    if probes_lib.resolve(model, config.probe) == "bn":
        need += probes_lib.bn_bytes(model, config.probe_count)
    have = statistics.available_bytes()
    logging.info("memory: about %.1f GB planned, %.1f GB available", need / 1e9, have / 1e9)
    if not config.quiet:
        print(f"memory: about {need / 1e9:.1f} GB planned for model '{model.name}' "
              f"({have / 1e9:.1f} GB available)", file=sys.stderr)
    if need > have:
        raise UserError(
            f"model '{model.name}' needs about {need / 1e9:.1f} GB to compress with "
            f"--probe_count={config.probe_count} and {have / 1e9:.1f} GB is available; "
            "lower --probe_count or free memory")


def _measure(original: bytes, pruned: bytes, probes: np.ndarray,
             threads: tuple[int, ...], kernel: str = "") -> dict:
    """Whole-model latency at batch 1 on this machine, side by side in one process: the
    original on stock LiteRT (XNNPACK), the pruned model with our delegate; at each thread
    count (the first one's figures at the top level)."""
    return _measure_side_by_side(original, [pruned], probes, threads, kernel)[0]


def _measure_side_by_side(original: bytes, candidates: list[bytes], probes: np.ndarray,
                          threads: tuple[int, ...], kernel: str = "") -> list[dict]:
    """_measure of each candidate, all timed in the same alternating rounds: two candidates
    timed apart differ by what the machine did in between (a 2-vCPU VM's two-thread times
    move by a fifth from one minute to the next), timed together only by what they are. Five
    rounds: with three, a two-thread model identical to the original was once reported
    0.87x."""
    from hybrid_pruning import timing

    x = probes[:1]
    rows: list[list[dict]] = [[] for _ in candidates]
    for n in threads:
        times = timing.best_times(
            timing.invoker(original, x, ours=False, threads=n),
            *(timing.invoker(c, x, ours=True, threads=n, kernel=kernel) for c in candidates),
            rounds=5, min_seconds=0.05)
        for i, ours in enumerate(times[1:]):
            rows[i].append({"original_seconds": times[0], "pruned_seconds": ours,
                            "speedup": times[0] / ours, "batch": 1, "threads": n})
    return [{**r[0], "by_threads": r} for r in rows]


SLOWER = "CONV_2D (our op made the whole model slower here, measured)"
# The ratio the measured fallback requires at every thread count. Above 1.0 because a model
# of a tenth of a millisecond moves a few per cent between runs at two threads
# (benchmarks/results/architectures.md): 1.0 at prune time is no promise at the user's.
FALLBACK_MARGIN = 1.03


def _measured_fallback(original: bytes, outcome: Outcome, probes: np.ndarray, reference: list,
                       threads: tuple[int, ...], config: PruneConfig, kernel: str = "") -> None:
    """The measurement wins: times the written model against the original at every thread
    count and, while it is not FALLBACK_MARGIN times as fast at one of them, puts our layers
    back on the builtin kernel, least predicted saving first, keeping each change that
    improves the worst ratio; if it is still slower than the original somewhere, all of them.
    Layers put back get their unpruned weights again where the guard allows (_unprune).
    Single-layer tables cannot see everything a whole model does (two thread pools sharing
    the cores, caches between layers, XNNPACK's graph split around our nodes)."""
    latency = _measure(original, outcome.tflite, probes, threads, kernel)
    predicted = outcome.search["predicted_seconds"]
    ours = sorted((r.layer for r in outcome.records
                   if r.runs_as == op_format.OP_NAME and r.layer in predicted),
                  key=lambda n: predicted[n]["builtin"] - predicted[n]["chosen"])
    model, layers = outcome.model, outcome.layers
    thresholds = {a.name: a.thresholds for a in outcome.activations}
    blocks = {w.name: w.block_size for w in outcome.weights}
    worst = min(r["speedup"] for r in latency["by_threads"])
    reverted: list[str] = []
    for name in ours:
        if worst >= FALLBACK_MARGIN:
            break
        tflite, records = _to_ours(model, layers, thresholds, blocks, config.dense_below,
                                   builtin=frozenset(reverted + [name]),
                                   int8_probes=_calibration(config, probes),
                                   unpruned_ours=_unpruned_ours(outcome.search))
        # The model as it stands and the trial, timed together: the trial is kept only if
        # it is the faster of the two, not because the machine was quieter when it ran.
        latency, trial = _measure_side_by_side(original, [outcome.tflite, tflite], probes,
                                               threads, kernel)
        worst = min(r["speedup"] for r in latency["by_threads"])
        trial_worst = min(r["speedup"] for r in trial["by_threads"])
        logging.info("measured fallback: %s on the builtin kernel: worst ratio %.3f -> %.3f",
                     name, worst, trial_worst)
        if trial_worst > worst:
            reverted.append(name)
            worst, latency = trial_worst, trial
            outcome.tflite, outcome.records = tflite, records
    rest = [name for name in ours if name not in reverted]
    if worst < 1.0 and rest:
        # No single revert helped enough and the model is still slower than the original at
        # some thread count: none of our layers stays (what is left is the original's speed).
        tflite, records = _to_ours(model, layers, thresholds, blocks, config.dense_below,
                                   builtin=frozenset(ours),
                                   int8_probes=_calibration(config, probes),
                                   unpruned_ours=_unpruned_ours(outcome.search))
        latency = _measure(original, tflite, probes, threads, kernel)
        logging.info("measured fallback: still slower (worst ratio %.3f): every layer back on "
                     "the builtin kernel", worst)
        reverted += rest
        outcome.tflite, outcome.records = tflite, records
    unpruned = False
    if reverted:
        unpruned = _unprune(outcome, reverted, probes, reference, config)
        for r in outcome.records:
            if r.layer in reverted:
                r.runs_as = SLOWER
        for name in reverted:
            predicted[name]["chosen"] = predicted[name]["builtin"]
        if not unpruned:
            outcome.fidelity = fidelity.compare(reference, runtime.predict_all(
                outcome.tflite, probes, config.num_threads,
                batch_size=statistics.predict_batch(model)))
    outcome.latency = latency
    outcome.search["measured_fallback"] = reverted
    outcome.search["measured_fallback_unpruned"] = unpruned


def _unprune(outcome: Outcome, names: list[str], probes: np.ndarray, reference: list,
             config: PruneConfig) -> bool:
    """Layers the measured fallback put back on the builtin kernel gain nothing from their
    zeros: they get their unpruned weights back (the other layers at their levels, re-fitted
    in order again), kept if the written model still meets the guard. True if kept."""
    tables, snapshot, refit = outcome.unpruned
    levels = outcome.search.get("levels")
    if tables is None or snapshot is None or not levels:
        return False
    model, layers = outcome.model, outcome.layers
    pruned_state = budget.Snapshot(model, tables)
    choice = [(0, 0) if t.layer.name in names else tuple(levels[t.layer.name]) for t in tables]
    snapshot.restore()
    budget.apply_levels(tables, choice, refit)
    thresholds = {a.name: None if a.name in names else a.thresholds
                  for a in outcome.activations}
    blocks = {w.name: w.block_size for w in outcome.weights}
    tflite, records = _to_ours(model, layers, thresholds, blocks, config.dense_below,
                               builtin=frozenset(names),
                               int8_probes=_calibration(config, probes),
                               unpruned_ours=_unpruned_ours(outcome.search))
    fid = fidelity.compare(reference, runtime.predict_all(
        tflite, probes, config.num_threads, batch_size=statistics.predict_batch(model)))
    if config.guard.miss(reference, fid) is not None:
        logging.info("measured fallback: unpruned %s miss the guard; kept pruned", names)
        pruned_state.restore()
        return False
    logging.info("measured fallback: %s unpruned", names)
    outcome.tflite, outcome.records, outcome.fidelity = tflite, records, fid
    for k, t in enumerate(tables):
        if t.layer.name in names:
            outcome.weights[k] = t.pruner.result(t.weights[0][0], 0.0)
            outcome.weights[k].block_size = 1
            levels[t.layer.name] = [0, 0]
    return True


def _global_budget(config: PruneConfig) -> bool:
    """Whether one budget for the whole network replaces the objective (budget.allocate)."""
    return any(v is not None for v in (config.target_macs, config.min_agreement,
                                       config.max_kl))


def _scaled(config: PruneConfig, scale: float) -> PruneConfig:
    return dataclasses.replace(
        config, weight_error_budget=config.weight_error_budget * scale,
        activation_error_budget=config.activation_error_budget * scale,
        constant_error_budget=config.constant_error_budget * scale,
        merge_error_budget=config.merge_error_budget * scale)


def _input_scaled(config: PruneConfig) -> bool:
    """Weight magnitudes are scaled by their inputs' spread only where the probes are matched
    to the model's BatchNorm statistics (config.probe resolved): synthetic images' spreads
    misled the pruning of the BatchNorm-free demo (benchmarks/results/architectures.md)."""
    return config.probe == "bn"


def _prepare(model, probes: np.ndarray, reference: list, config: PruneConfig, scale: float,
             bar, profiles: list) -> Prepared:
    """The target-independent work at per-layer budgets x `scale`: channel removal (which pays
    on every target), the layers' input statistics and, under the latency objective, every
    layer's candidate levels (budget.tabulate)."""
    config = _scaled(config, scale)
    removed: dict[str, dict[str, int]] = {}
    refused: dict[str, str] = {}
    unjudged: dict[str, int] = {}
    for technique, fn, technique_budget in (
            ("constant", constant_channels.fold_constant_channels, config.constant_error_budget),
            ("merged", channel_merging.merge_channels, config.merge_error_budget)):
        model, plans, refused = fn(model, probes, technique_budget)
        for plan in plans:
            for producer in plan.group.producers:
                if plan.removed:
                    removed.setdefault(producer.name, {})[technique] = len(plan.removed)
                if plan.unjudged:
                    unjudged[producer.name] = max(unjudged.get(producer.name, 0), plan.unjudged)
    layers, _ = graph.prunable_layers(model)
    inputs = statistics.collect(model, layers, probes, config.seed)
    tables = None
    # One stepwise pass (its segments traced once) for the damage calibration and the re-fit.
    stepwise = statistics.Stepwise.within_budget(model, layers, probes) \
        if profiles[0] is not None else None
    if profiles[0] is not None:
        tables = budget.tabulate(
            model, layers, inputs, probes, reference, config.block_size, bar,
            config.max_sparsity,
            # Blocks of 4 output channels let the vector kernels reuse each input load: the
            # profile prices them per layer, unless the user fixed a block size.
            block_sizes=(1, 4) if config.block_size == 1 else None, latency=True,
            activations=config.dtype == "float32" and any(p.activation_pays for p in profiles),
            input_scaled=_input_scaled(config), input_groups=config.dtype == "int8",
            stepwise=stepwise)
    refit = weight_pruning.SequentialRefit(model, layers, probes, config.seed, stepwise) \
        if tables is not None and config.sequential_refit else None
    return Prepared(model, layers, inputs, removed, refused, unjudged, tables, refit)


def _finish(prepared: Prepared, probes: np.ndarray, reference: list, config: PruneConfig,
            profile, bar, original_macs: int) -> Outcome:
    """Prunes the prepared model for one target (its profile; None: per-layer budgets or a
    global budget), writes it and measures its fidelity on the probes."""
    model, layers, inputs = prepared.model, prepared.layers, prepared.inputs
    global_budget = _global_budget(config)

    reconverter = []  # made at the first check: a search that checks nothing converts nothing
    int8_probes = _calibration(config, probes)

    def evaluate(thresholds_by_layer):
        # The search changes weights only: its float checks patch one conversion (the written
        # model below is converted afresh). int8 checks convert: the calibration follows the
        # weights.
        if int8_probes is not None:
            flat, _ = _to_ours(model, layers, {}, config.block_size, int8_probes=int8_probes)
        else:
            if not reconverter:
                reconverter.append(convert.Reconverter(model, layers))
            flat, _ = _to_ours(model, layers, thresholds_by_layer, config.block_size,
                               flat=reconverter[0]())
        return fidelity.compare(reference,
                                runtime.predict_all(flat, probes, config.num_threads,
                                                    batch_size=statistics.predict_batch(model)))

    snapshot = None
    if profile is not None:
        snapshot = budget.Snapshot(model, prepared.tables)  # unpruned: reverts restore it
        weights, activations, search = budget.choose(
            model, prepared.tables, evaluate,
            accept=lambda fid: config.guard.miss(reference, fid) is None, profile=profile,
            refit=prepared.refit, refine=config.refine_steps)
    elif global_budget:
        weights, activations, search = budget.allocate(
            model, layers, inputs, probes, reference, evaluate,
            target_macs=None if config.target_macs is None
            else config.target_macs * original_macs,
            min_agreement=config.min_agreement, max_kl=config.max_kl,
            block_size=config.block_size, progress=bar, max_sparsity=config.max_sparsity,
            input_scaled=_input_scaled(config))
    else:
        search = None
        weights = weight_pruning.prune_weights(
            layers, inputs, config.weight_error_budget, config.max_sparsity,
            config.block_size, progress=bar, input_scaled=_input_scaled(config))
        inputs = statistics.collect(model, layers, probes, config.seed)
        activations = activation_pruning.prune_activations(
            layers, inputs, config.activation_error_budget, progress=bar)
    tflite, records = _to_ours(model, layers, {a.name: a.thresholds for a in activations},
                               {w.name: w.block_size for w in weights}, config.dense_below,
                               int8_probes=int8_probes, unpruned_ours=_unpruned_ours(search))
    fid = fidelity.compare(reference, runtime.predict_all(
        tflite, probes, config.num_threads, batch_size=statistics.predict_batch(model)))
    return Outcome(model, layers, weights, activations, prepared.removed, prepared.refused,
                   prepared.unjudged, search, tflite, records, fid,
                   (prepared.tables, snapshot, prepared.refit))
