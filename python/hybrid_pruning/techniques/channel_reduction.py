"""Shared machinery of the two channel-removing techniques (near-constant channels and
near-identical channels): exact error on probes, selection within a budget, and the surgery
that rebuilds a Keras model with fewer channels.

A removed input channel j of a consumer layer is replaced by a * x_i + b (a merge into kept
channel i) or by the constant b (a = 0). With p the consumer's input patches (zero padding
included), the output changes by d^T W_R where d_k = x_k - a_k x_src(k) - b_k over the
removed patch columns R. Its energy follows exactly from the consumer's patch moments
E[p p^T] and E[p]: choosing a set of channels costs a few small matrix products, and the
border effect of zero padding (where x = 0 but the folded bias still adds b) is counted.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hybrid_pruning import graph, statistics


@dataclasses.dataclass
class Candidate:
    channel: int
    source: int | None  # kept channel merged into; None for a constant
    scale: float  # a
    offset: float  # b (the constant, for a constant channel)
    cost: float  # relative error^2 of removing this channel alone


@dataclasses.dataclass
class GroupPlan:
    group: graph.ChannelGroup
    removed: list[int]  # channel indices, removed from every producer and member
    replacements: dict[str, list[Candidate]]  # per consumer: what stands in for them
    channels_before: int
    relative_error: float  # the worst consumer's
    unjudged: int = 0  # channels kept because the probes miss their BatchNorm's record


class ConsumerStats:
    """Moments of a chain consumer's input on the probes, and its folded weights."""

    def __init__(self, consumer: graph.PrunableLayer, x):
        """`x`: the consumer's input on the probes, as a statistics.LayerSample or an array."""
        sample = statistics.as_sample(consumer, x)
        self.spatial = consumer.kind == "conv2d"
        self.channels = int(consumer.kernel.shape[-2]) if self.spatial else None
        p = sample.rows.astype(np.float64)
        # Fewer rows than columns (a Dense layer on a flattened map): errors straight from
        # the rows, never the [K, K] moment matrix.
        self.rows = p if p.shape[1] > p.shape[0] else None
        self.second = p.T @ p / len(p) if self.rows is None else None
        self.mean = p.mean(0)
        k = consumer.folded_kernel
        self.w = k.reshape(-1, k.shape[-1]).astype(np.float64)
        y = p @ self.w + consumer.folded_bias
        self.energy = max(float(np.mean(np.sum(y * y, axis=1))), 1e-30)

    def configure(self, channels: int) -> None:
        self.channels = channels
        self.taps = self.w.shape[0] // channels

    def error(self, removed: list[Candidate]) -> float:
        """Relative output error of the consumer when all of `removed` are replaced."""
        if not removed:
            return 0.0
        c, taps = self.channels, self.taps
        tap_offsets = np.arange(taps) * c
        chan = np.repeat([cand.channel for cand in removed], taps)
        # A constant has no source: point it at itself with scale 0 so its terms vanish.
        src = np.repeat([c_.source if c_.source is not None else c_.channel for c_ in removed], taps)
        a = np.repeat([cand.scale for cand in removed], taps)
        b = np.repeat([cand.offset for cand in removed], taps)
        offsets = np.tile(tap_offsets, len(removed))
        cols, scols = chan + offsets, src + offsets
        wr = self.w[cols]
        if self.rows is not None:
            d = self.rows[:, cols] - a * self.rows[:, scols] - b
            return float(np.sqrt(np.mean(np.sum((d @ wr) ** 2, axis=1)) / self.energy))
        g = self.second
        # E[d d^T] for d = x_cols - a x_scols - b, from the second moment and the mean.
        e = (g[np.ix_(cols, cols)] - a[:, None] * g[np.ix_(scols, cols)]
             - g[np.ix_(cols, scols)] * a[None, :] + np.outer(a, a) * g[np.ix_(scols, scols)])
        dm = self.mean[cols] - a * self.mean[scols]
        e += np.outer(b, b) - np.outer(dm, b) - np.outer(b, dm)
        return float(np.sqrt(max(np.sum((e @ wr) * wr), 0.0) / self.energy))


_GAUSSIAN_SAMPLES = 4096
# A Gaussian is not the real channel's shape: on probes that match the BatchNorm statistics
# closely the real / probe variance ratio still reaches a few; probes that miss a channel's
# level leave it hundreds of times short. Up to this ratio the probes are trusted.
_UNDER_EXERCISED = 10.0


def under_exercised(consumer, values: np.ndarray) -> np.ndarray | None:
    """Per channel, whether it varies over _UNDER_EXERCISED times more on real inputs than
    on the probes, for a consumer that reads a BatchNormalization through an activation
    (else None). The BatchNorm recorded the real mean and variance of its input; a Gaussian
    with those moments, carried through the activation, stands in for the real channel.
    Probes that miss a channel's real level (a first layer's, on a narrow domain) leave it
    constant after the activation while it carries the real inputs' signal: the probes
    cannot judge such a channel, so it stays. `values`: [M, channels] of the consumer's
    input on the probes."""
    found = graph.batch_norm_before(consumer)
    if found is None:
        return None
    bn, chain = found
    w = {graph.variable_name(v): np.asarray(v.numpy(), np.float64) for v in bn.weights}
    scale, shift = graph.batch_norm_fold(bn)
    if len(scale) != values.shape[1]:
        return None
    rng = np.random.default_rng(0)
    x = rng.standard_normal((_GAUSSIAN_SAMPLES, len(scale))) * np.sqrt(w["moving_variance"])
    x = (scale * (x + w["moving_mean"]) + shift).astype(np.float32)
    for layer in chain:
        x = np.asarray(layer(x))
    real = x.astype(np.float64).var(0)
    probe = values.astype(np.float64).var(0)
    return real > _UNDER_EXERCISED * probe + 1e-12 * max(float(real.max()), 1e-30)


def channel_moments(x: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean [C] and covariance [C, C] of the channels over probes and positions (`x`: any
    array whose last axis, after reshaping to `channels` columns, is the channel)."""
    flat = x.reshape(-1, channels).astype(np.float64)
    mean = flat.mean(0)
    cov = flat.T @ flat / len(flat) - np.outer(mean, mean)
    return mean, cov


def select(stats: list[ConsumerStats], proposals: list[list[Candidate]], budget: float,
           max_fraction: float = 0.9, kept: np.ndarray | None = None
           ) -> tuple[list[int], float]:
    """The longest prefix of the cheapest-first valid channels whose removal keeps every
    consumer's relative output error within `budget`. proposals[k][j] is consumer k's
    replacement for channel j; a channel costs what it costs its worst consumer. Channels
    where `kept` is true are never removed."""
    for st, cands in zip(stats, proposals):
        for cand in cands:
            cand.cost = st.error([cand]) ** 2
    channels = len(proposals[0])
    cost = np.max([[c.cost for c in cands] for cands in proposals], axis=0)
    removed, sources, order = set(), set(), []
    limit = int(max_fraction * channels)
    for j in np.argsort(cost, kind="stable"):
        j = int(j)
        if len(order) >= limit:
            break
        if kept is not None and kept[j]:
            continue
        # A merge source must stay, and a removed channel cannot serve as a source.
        srcs = {cands[j].source for cands in proposals} - {None}
        if j in sources or srcs & removed:
            continue
        order.append(j)
        removed.add(j)
        sources |= srcs

    def worst(n: int) -> float:
        return max(st.error([cands[j] for j in order[:n]]) for st, cands in zip(stats, proposals))

    lo, hi = 0, len(order)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if worst(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return order[:lo], worst(lo)


def _named(layer) -> dict[str, int]:
    return {graph.variable_name(v): i for i, v in enumerate(layer.weights)}


def _fold_into_consumer(weights: dict, consumer, removed: list[Candidate], c: int) -> None:
    """Edits the consumer's weights so that it reads each removed channel as its
    replacement a * x_source + b, without the channel."""
    w = weights[consumer.name]
    ki = graph.kernel_index(consumer)
    kernel = w[ki]
    k3 = kernel.reshape(-1, c, kernel.shape[-1]).astype(np.float64)  # [taps, C, out]
    delta = np.zeros(kernel.shape[-1])
    for cand in removed:
        col = k3[:, cand.channel, :]
        if cand.source is not None:
            k3[:, cand.source, :] += cand.scale * col
        delta += cand.offset * col.sum(0)
    keep = np.setdiff1d(np.arange(c), [cand.channel for cand in removed])
    k3 = k3[:, keep, :]
    new_shape = kernel.shape[:-2] + (len(keep), kernel.shape[-1]) if kernel.ndim == 4 else (
        k3.shape[0] * len(keep), kernel.shape[-1])
    w[ki] = k3.reshape(new_shape).astype(kernel.dtype)
    if ki:  # a SeparableConv2D consumer: its depthwise half loses the channels too
        w[0] = w[0][:, :, keep, :]
    if consumer.get_config().get("use_bias", False):
        w[ki + 1] = (w[ki + 1] + delta).astype(w[ki + 1].dtype)
    else:  # fold into the following BatchNorm's beta, through its scale
        bn = graph.following_batch_norm(consumer)
        idx = _named(bn)
        bw = weights[bn.name]
        scale, _ = graph.batch_norm_fold(bn)  # its weights are not edited yet
        bw[idx["beta"]] = (bw[idx["beta"]] + scale * delta).astype(bw[idx["beta"]].dtype)


def rebuild(model, plans: list[GroupPlan]):
    """A new Keras model with every plan's channels removed from its producers and members
    and folded into its consumers."""
    weights = {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in model.layers}
    filters: dict[str, int] = {}
    # Consumer side first: a layer can be a consumer of one group and a producer of another
    # (or of the same one).
    for plan in plans:
        for consumer, _ in plan.group.consumers:
            _fold_into_consumer(weights, consumer, plan.replacements[consumer.name],
                                plan.channels_before)
    for plan in plans:
        keep = np.setdiff1d(np.arange(plan.channels_before), plan.removed)
        for producer in plan.group.producers:
            w = weights[producer.name]
            ki = graph.kernel_index(producer)
            w[ki] = w[ki][..., keep]
            if len(w) > ki + 1:
                w[ki + 1] = w[ki + 1][keep]
            filters[producer.name] = len(keep)
        for layer in plan.group.members:
            kind = graph.class_name(layer)
            if kind not in graph.PER_CHANNEL_WEIGHTS:
                continue
            lw = weights[layer.name]
            if kind == "DepthwiseConv2D":
                lw[0] = lw[0][:, :, keep, :]
                if len(lw) > 1:
                    lw[1] = lw[1][keep]
            else:  # BatchNorm statistics, PReLU slopes (unless shared over channels)
                weights[layer.name] = [v[..., keep] if v.shape[-1] == plan.channels_before
                                       else v for v in lw]
    config = model.get_config()
    for layer_cfg in config["layers"]:
        layer_cfg.pop("build_config", None)
        name = layer_cfg["config"]["name"]
        if name in filters:
            key = "filters" if "filters" in layer_cfg["config"] else "units"
            layer_cfg["config"][key] = filters[name]
    new = type(model).from_config(config)
    for layer in new.layers:
        if layer.weights:
            layer.set_weights(weights[layer.name])
    return new


def reduce_channels(model, probes: np.ndarray, budget: float, propose, max_fraction: float = 0.9
                    ) -> tuple[object, list[GroupPlan], dict[str, str]]:
    """Runs one technique: `propose(values, channels)` lists, per channel, a replacement from
    the values [M, channels] of a consumer's input; the cheapest channels are removed while
    every consumer's relative output error stays within `budget`. A plan per group that
    loses channels or keeps some unjudged (under_exercised)."""
    groups, refused = graph.channel_groups(model)
    if not groups or budget <= 0:
        return model, [], refused
    layers, _ = graph.prunable_layers(model)
    by_name = {pl.name: pl for pl in layers}
    usable = [g for g in groups if all(c.name in by_name for c, _ in g.consumers)]
    for g in groups:
        if g not in usable:
            for p in g.producers:
                refused[p.name] = "a consumer of its channels is not prunable"
    readers = [by_name[c.name] for g in usable for c, _ in g.consumers]
    samples = iter(statistics.collect(model, readers, probes))
    plans = []
    for group in usable:
        channels = group.channels
        stats, proposals, kept = [], [], np.zeros(channels, bool)
        for consumer, _ in group.consumers:
            sample = next(samples)
            st = ConsumerStats(by_name[consumer.name], sample)
            st.configure(channels)
            values = sample.channel_values(channels, spatial=st.spatial)
            missed = under_exercised(consumer, values)
            if missed is not None:
                kept |= missed
            stats.append(st)
            proposals.append(propose(values, channels))
        chosen, err = select(stats, proposals, budget, max_fraction, kept)
        if chosen or kept.any():
            replacements = {c.name: [cands[j] for j in chosen]
                            for (c, _), cands in zip(group.consumers, proposals)}
            plans.append(GroupPlan(group, chosen, replacements, channels, err, int(kept.sum())))
    removing = [plan for plan in plans if plan.removed]
    return (rebuild(model, removing) if removing else model), plans, refused
