"""Prunes a trained Keras CNN without data and writes a LiteRT model that runs our ops.

    ./bazelw run //python:prune -- --model=demo --output=/tmp/demo_pruned.tflite
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging

from hybrid_pruning import fidelity as _fidelity  # numpy only: the guard's defaults

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Keras model (.keras, .h5, or a tf.keras SavedModel "
                    "directory), or 'demo' for the built-in one.")
flags.DEFINE_string("output", None, "Where to write the pruned .tflite (never the input).")
flags.DEFINE_string("report", None, "Optional path for a JSON report.")
flags.DEFINE_string("plot", None, "Optional path for a PNG of per-layer MACs and sparsity.")
flags.DEFINE_float("weight_error_budget", 0.15,
                   "Per layer: the largest relative change of the layer's output on probe "
                   "inputs that weight pruning may cause.", lower_bound=0.0)
flags.DEFINE_float("activation_error_budget", 0.15,
                   "Per layer: the largest relative output change that zeroing small input "
                   "activations (per-channel thresholds, skipped at run time) may cause; 0 = off.",
                   lower_bound=0.0)
flags.DEFINE_float("constant_error_budget", 0.05,
                   "Per layer: the largest relative change of the next layer's output that "
                   "folding near-constant channels into its bias may cause; 0 = off.",
                   lower_bound=0.0)
flags.DEFINE_float("merge_error_budget", 0.05,
                   "Per layer: the largest relative change of the next layer's output that "
                   "merging near-identical channels may cause; 0 = off.", lower_bound=0.0)
flags.DEFINE_float("target_macs", None,
                   "Global cost budget: keep at most this fraction of the original MACs "
                   "(effective, counting skipped zeros); layers and techniques share it.",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("min_agreement", None,
                   "Global fidelity budget: top-1 agreement with the original model on the "
                   "probes must stay at least this.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("max_kl", None,
                   "Global fidelity budget: KL divergence from the original model's outputs on "
                   "the probes must stay at most this.", lower_bound=0.0)
flags.DEFINE_enum("objective", "latency", ["latency", "budgets"],
                  "'latency': the fastest model on this machine (measured per layer: TFLite's "
                  "builtin conv or our op, at which sparsity and block size) whose fidelity "
                  "meets the guard; 'budgets': the per-layer error budgets of each technique.")
flags.DEFINE_list("target", ["host"],
                  "Where the model will run, one .tflite each (with several, the target's name "
                  "goes before .tflite in --output, --report and --plot): host (this machine, "
                  "measured), x86_64-avx2, x86_64-avx512 (measured with that kernel when this "
                  "CPU has it, else modelled), arm64-neon, riscv64-rvv[:vlen=N], generic (the "
                  "portable reference kernel on a scalar core; zero activations pay there) "
                  "-- modelled from our kernels' instruction counts and documented core costs. "
                  "Used by --objective=latency.")
flags.DEFINE_float("max_sparsity", 0.99, "Upper bound of any layer's weight sparsity.",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("block_size", 1, "Prune blocks of this many consecutive output channels "
                     "(1 = unstructured; --dtype=int8: of groups of 4 input channels).",
                     lower_bound=1, upper_bound=64)
flags.DEFINE_float("dense_below", 0.0, "Dense fallback: a Conv2D whose weight sparsity ends up "
                   "below this stays TFLite's builtin CONV_2D (faster there) and keeps no "
                   "activation thresholds. Measured break-even on x86 (benchmarks/results/"
                   "conv_bench_x86.md): about 0.7 unstructured, 0.5 with --block_size=4.",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_enum("probe", "auto", ["auto", "bn", "image", "random"],
                  "Data-free probe inputs: 'bn' optimises inputs until every BatchNorm sees its "
                  "stored statistics; 'image' draws synthetic natural-image-like inputs (1/f "
                  "noise and dead leaves); 'random' is uniform noise; 'auto' is 'bn' for models "
                  "with BatchNorm, else 'image'.")
flags.DEFINE_integer("probe_count", 128, "Number of probe inputs.", lower_bound=1)
flags.DEFINE_enum("dtype", "float32", ["float32", "int8"],
                  "Data type of the written model. int8: full-integer int8 (the stock "
                  "converter's, calibrated on the probes: still no data), its pruned convs on "
                  "our int8 op where faster (measured here, modelled for other devices); "
                  "compared against the stock int8 conversion of the original. Needs "
                  "--objective=latency.")
flags.DEFINE_list("input_range", ["0", "1"], "Min,max of the model's inputs (for probes).")
flags.DEFINE_integer("seed", 0, "Seed of the probe inputs.")
flags.DEFINE_list("num_threads", ["1", "all"], "Thread counts the model will run with "
                  "('all': this machine's cores): the host's latency profile is measured at "
                  "each, a conv runs our op only where it is faster than the builtin at every "
                  "one, and the written model is timed at each.")
flags.DEFINE_bool("quiet", False, "No progress bar and no summary.")
flags.DEFINE_bool("verbose", False, "Also show TensorFlow's, Keras' and the converter's own "
                  "messages (hidden by default).")
flags.DEFINE_list("input_shape", None, "H,W,C to prune for, when the model's input has "
                  "dynamic dimensions (e.g. a fully convolutional model); the .tflite gets it.")
flags.DEFINE_float("guard_agreement", None,
                   "Fidelity guard for classifier outputs: top-1 agreement of the written "
                   "model with the original on the probes must be at least this (per-layer "
                   "budgets are scaled down until it holds). Default: "
                   f"{_fidelity.DEFAULT_AGREEMENT['bn']:g} with 'bn' probes, where --guard_kl "
                   f"is what binds; {_fidelity.FALLBACK_AGREEMENT:g} with other probes.",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("guard_kl", _fidelity.DEFAULT_KL,
                   "Fidelity guard for classifier outputs: KL divergence of the written "
                   "model's outputs (probabilities, or the softmax of logits) from the "
                   "original's on the probes must be at most this. Lower it for a closer "
                   "model, raise it for a faster one.", lower_bound=0.0)
flags.DEFINE_float("guard_output_error", 0.1,
                   "Fidelity guard for other outputs (dense maps, regression): relative RMS "
                   "error ||y' - y|| / ||y|| on the probes must be at most this.",
                   lower_bound=0.0)
flags.DEFINE_bool("backoff", True, "With per-layer budgets: when the guard is missed, retry "
                  "with the budgets halved (down to no pruning) instead of failing.")
flags.DEFINE_integer("refine_steps", 30, "Latency objective: after the global search, up to "
                     "this many moves to faster levels (single-layer steps, and exchanges that "
                     "give back a little time on one layer for more on another), each kept "
                     "only if the written model still meets the guard (0: off; each costs one "
                     "fidelity check).", lower_bound=0)
flags.DEFINE_bool("write_anyway", False, "Write the output even when it misses the fidelity "
                  "guard (the exit status is still 3).")
flags.mark_flags_as_required(["model", "output"])
flags.register_multi_flags_validator(
    ["target_macs", "min_agreement", "max_kl"],
    lambda v: sum(x is not None for x in v.values()) <= 1,
    message="give at most one global budget: --target_macs, --min_agreement or --max_kl")


@flags.multi_flags_validator(["dtype", "objective"],
                             message="--dtype=int8 needs --objective=latency (int8 pruning is "
                             "chosen by int8 latency, measured or modelled)")
def _int8_needs_latency(values):
    return values["dtype"] != "int8" or values["objective"] == "latency"


@flags.validator("input_shape", message="--input_shape: expected three positive integers H,W,C")
def _valid_input_shape(value):
    return value is None or (len(value) == 3 and all(v.isdigit() and int(v) > 0 for v in value))


@flags.validator("num_threads")
def _valid_num_threads(value):
    from hybrid_pruning import targets  # deferred: keeps --help fast

    try:
        targets.thread_counts(value or [])
    except ValueError as e:
        raise flags.ValidationError(f"--num_threads: {e} (e.g. 1,all)") from e
    return True


def _input_range() -> tuple[float, float]:
    from hybrid_pruning.io import UserError

    try:
        lo, hi = (float(v) for v in FLAGS.input_range)
    except ValueError as e:
        raise UserError(f"--input_range={','.join(FLAGS.input_range)}: expected two numbers "
                        "min,max") from e
    if not lo < hi:
        raise UserError(f"--input_range={lo},{hi}: min must be below max")
    return lo, hi


def _guard():
    from hybrid_pruning import fidelity

    guard = fidelity.Guard(min_agreement=fidelity.AUTO if FLAGS.guard_agreement is None
                           else FLAGS.guard_agreement, max_kl=FLAGS.guard_kl,
                           max_relative_error=FLAGS.guard_output_error)
    if FLAGS.min_agreement is not None:  # the global target is the guard, alone
        guard.min_agreement, guard.agreement_flag = FLAGS.min_agreement, "--min_agreement"
        guard.max_kl = None
    if FLAGS.max_kl is not None:
        guard.max_kl, guard.kl_flag = FLAGS.max_kl, "--max_kl"
    return guard


def _targets() -> tuple[str, ...]:
    from hybrid_pruning import targets
    from hybrid_pruning.io import UserError

    specs = tuple(t.strip() for t in FLAGS.target if t.strip())
    if not specs:
        raise UserError("--target: give at least one target")
    for spec in specs:
        try:
            targets.parse_target(spec)
        except ValueError as e:
            raise UserError(f"--target: {e}") from e
    if len(set(specs)) != len(specs):
        raise UserError(f"--target={','.join(specs)}: a target is named twice")
    global_budget = any(v is not None for v in (FLAGS.target_macs, FLAGS.min_agreement,
                                                FLAGS.max_kl))
    if len(specs) > 1 and (FLAGS.objective != "latency" or global_budget):
        raise UserError("several --target values need --objective=latency and no global "
                        "budget (--target_macs, --min_agreement, --max_kl): the other "
                        "objectives do not depend on the target")
    return specs


def _per_target(path: str | None, spec: str, several: bool) -> str | None:
    """--output=model.tflite -> model.arm64-neon.tflite when there are several targets."""
    if path is None or not several:
        return path
    from hybrid_pruning import targets

    stem, dot, ext = path.rpartition(".")
    return f"{stem}.{targets.file_tag(spec)}.{ext}" if dot else f"{path}.{targets.file_tag(spec)}"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.verbose:
        from hybrid_pruning import console

        console.quiet_libraries()
    from hybrid_pruning import io, pipeline, report as report_lib

    try:
        specs = _targets()
        several = len(specs) > 1
        model_path = io.model_path(FLAGS.model)
        outputs = {t: io.check_output(_per_target(FLAGS.output, t, several), model_path)
                   for t in specs}
        taken = set(outputs.values())
        reports = {t: io.check_output(_per_target(FLAGS.report, t, several), model_path,
                                      *taken) if FLAGS.report else None for t in specs}
        plots = {t: io.check_output(_per_target(FLAGS.plot, t, several), model_path, *taken)
                 if FLAGS.plot else None for t in specs}
        if FLAGS.plot and not FLAGS.plot.endswith(".png"):
            raise io.UserError(f"--plot={FLAGS.plot}: must end with .png")
        config = pipeline.PruneConfig(
            weight_error_budget=FLAGS.weight_error_budget,
            activation_error_budget=FLAGS.activation_error_budget,
            constant_error_budget=FLAGS.constant_error_budget,
            merge_error_budget=FLAGS.merge_error_budget, target_macs=FLAGS.target_macs,
            min_agreement=FLAGS.min_agreement, max_kl=FLAGS.max_kl,
            max_sparsity=FLAGS.max_sparsity, objective=FLAGS.objective,
            block_size=FLAGS.block_size, dense_below=FLAGS.dense_below, probe=FLAGS.probe,
            probe_count=FLAGS.probe_count,
            input_range=_input_range(), seed=FLAGS.seed, num_threads=",".join(FLAGS.num_threads),
            quiet=FLAGS.quiet, guard=_guard(), auto_backoff=FLAGS.backoff,
            refine_steps=FLAGS.refine_steps,
            input_shape=tuple(int(v) for v in FLAGS.input_shape) if FLAGS.input_shape
            else None, targets=specs, dtype=FLAGS.dtype)
        model = io.load_keras_model(model_path)
        results = dict(zip(specs, pipeline.compress_targets(model, config).values()))
    except io.UserError as e:
        sys.exit(f"prune: error: {e}")
    misses = {t: r.fidelity_miss for t, r in results.items() if r.fidelity_miss}
    for t, result in results.items():
        result.report["model"] = model_path
        result.report["output"] = outputs[t]
    if misses and not FLAGS.write_anyway:
        if not FLAGS.quiet:
            for t, result in results.items():
                print((f"== {t}\n" if several else "") + report_lib.summary(result.report))
        which = "; ".join(f"{t}: {m}" if several else m for t, m in misses.items())
        sys.exit(f"prune: error: the pruned model misses the fidelity guard: {which}. Nothing "
                 f"was written (--write_anyway writes it regardless).")
    for t, result in results.items():
        io.write_bytes_atomic(outputs[t], result.tflite)
        if reports[t]:
            io.write_bytes_atomic(reports[t],
                                  (json.dumps(result.report, indent=2) + "\n").encode())
        if plots[t]:
            with io.atomic_path(plots[t]) as tmp:
                report_lib.plot(result.report, tmp)
        if not FLAGS.quiet:
            print((f"== {t}: {outputs[t]}\n" if several else "")
                  + report_lib.summary(result.report))
        logging.info("wrote %s", outputs[t])
    if several and not FLAGS.quiet:
        print(report_lib.comparison({t: r.report for t, r in results.items()}))
    if misses:
        for t in misses:
            print(f"prune: warning: {outputs[t]} misses the fidelity guard: {misses[t]}",
                  file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    app.run(main)
