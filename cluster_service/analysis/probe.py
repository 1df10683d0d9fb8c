"""Linear probes for every concept at once, with a control task per concept (Hewitt & Liang, 2019).

Per concept a binary probe (member vs as many non-member occurrences, 60/20/20 split, seeded) trained the
NeuroX way (its ``train_logistic_regression_probe``): cross-entropy, Adam, mini-batches of ``batch``
(NeuroX's 32) per probe, ``epochs`` (10) epochs, optional elastic net; the learning rate is 0.01, not
NeuroX's 0.001, which leaves the probes of concepts of a few hundred tokens under-trained in 10 epochs.

All probes train together: the weights are one [P, D] matrix (one output per probe) and each step takes
the next mini-batch of every probe that still has one, so K concepts cost one pass over the layer in
memory per epoch, not K. Adam is applied row by row only to the probes that had a batch, and a probe's
batch order depends only on its own pairs, so every probe gets exactly the updates it would get alone.
The control task maps every word type of a concept's sample to a random label with the same class
balance; selectivity = accuracy − control accuracy. Pure array code: vectors, assignments and word-type
ids in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SPLITS = (0.6, 0.2, 0.2)
TRAIN, DEV, TEST = 0, 1, 2


@dataclass(frozen=True)
class ProbeSettings:
    epochs: int = 10
    batch: int = 32
    lr: float = 0.01
    l1: float = 0.0
    l2: float = 0.0
    max_members: int = 5000
    seed: int = 0


@dataclass
class Pairs:
    """The training data of every probe: (token row, probe id, 0/1 target, split)."""

    token: np.ndarray  # int64 [P]
    probe: np.ndarray  # int64 [P]
    target: np.ndarray  # float32 [P]
    split: np.ndarray  # int8 [P]


def sample_pairs(assignments: np.ndarray, k: int, max_members: int, seed: int) -> Pairs:
    """Per concept its members (at most ``max_members``, seeded) and as many random non-members, each
    concept's pairs split 60/20/20 at random."""
    rng = np.random.default_rng(seed)
    n = len(assignments)
    order = np.argsort(assignments, kind="stable")
    bounds = np.searchsorted(assignments[order], np.arange(k + 1))
    tokens, probes, targets = [], [], []
    for c in range(k):
        members = order[bounds[c]:bounds[c + 1]]
        if len(members) > max_members:
            members = np.sort(rng.choice(members, max_members, replace=False))
        want = min(len(members), n - (bounds[c + 1] - bounds[c]))
        others = _non_members(assignments, c, want, rng)
        tokens += [members, others]
        probes.append(np.full(len(members) + len(others), c))
        targets += [np.ones(len(members), np.float32), np.zeros(len(others), np.float32)]
    token, probe = np.concatenate(tokens).astype(np.int64), np.concatenate(probes).astype(np.int64)
    return Pairs(token, probe, np.concatenate(targets), _splits(probe, k, rng))


def _non_members(assignments: np.ndarray, c: int, want: int, rng: np.random.Generator) -> np.ndarray:
    """``want`` distinct random rows outside concept ``c`` (rejection sampling; concepts are a small share)."""
    found = np.empty(0, dtype=np.int64)
    for _ in range(64):
        if len(found) >= want:
            break
        draw = rng.integers(0, len(assignments), size=2 * (want - len(found)) + 16)
        found = np.unique(np.concatenate([found, draw[assignments[draw] != c]]))
    if len(found) < want:  # a concept of most tokens: take the complement directly
        found = np.flatnonzero(assignments != c)
    return np.sort(rng.choice(found, want, replace=False)) if want else found[:0]


def _splits(probe: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    split = np.empty(len(probe), dtype=np.int8)
    order = np.argsort(probe, kind="stable")
    bounds = np.searchsorted(probe[order], np.arange(k + 1))
    for c in range(k):
        idx = order[bounds[c]:bounds[c + 1]]
        split[idx] = _split_of(len(idx), rng)
    return split


def _split_of(n: int, rng: np.random.Generator) -> np.ndarray:
    cut1, cut2 = round(n * SPLITS[0]), round(n * (SPLITS[0] + SPLITS[1]))
    labels = np.full(n, TEST, dtype=np.int8)
    labels[:cut1], labels[cut1:cut2] = TRAIN, DEV
    return labels[rng.permutation(n)]


def control_targets(pairs: Pairs, types: np.ndarray, seed: int) -> np.ndarray:
    """Hewitt & Liang's control task: each word type in a concept's sample gets one random label, drawn
    with the concept's class balance; every occurrence of the type carries it."""
    rng = np.random.default_rng(seed + 7919)
    out = np.empty(len(pairs.token), dtype=np.float32)
    order = np.argsort(pairs.probe, kind="stable")
    bounds = np.searchsorted(pairs.probe[order], np.arange(int(pairs.probe.max(initial=-1)) + 2))
    for c in range(len(bounds) - 1):
        idx = order[bounds[c]:bounds[c + 1]]
        if not len(idx):
            continue
        uniq, inverse = np.unique(types[pairs.token[idx]], return_inverse=True)
        share = float(pairs.target[idx].mean())
        out[idx] = (rng.random(len(uniq)) < share).astype(np.float32)[inverse]
    return out


Scale = tuple[torch.Tensor, torch.Tensor] | None


def _rows(x: torch.Tensor, idx: torch.Tensor, scale: Scale) -> torch.Tensor:
    """Rows of ``x`` as float32, standardized per neuron when ``scale`` (mean, std) is given."""
    rows = torch.index_select(x, 0, idx).float()
    return rows if scale is None else (rows - scale[0]) / scale[1]


@torch.no_grad()
def train_probes(x: torch.Tensor, pairs: Pairs, n_probes: int, cfg: ProbeSettings, scale: Scale = None,
                 progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train every probe; returns weights [P, D], biases [P] and accuracy [P, 3] (train, dev, test; NaN
    for a probe with no pair in a split). ``x``: the layer's vectors (any float dtype), standardized per
    neuron with ``scale`` so weight mass compares neurons of different ranges.

    The gradient of the mean binary cross-entropy (plus the elastic net) is written out rather than left
    to autograd: per step it is one gather of the batch rows and two ``index_add`` into the probes'
    rows, which keeps a step's cost proportional to the rows in it. It runs on one thread: the steps are
    many small operations, which torch's thread pool slows down (14× on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(x, pairs, n_probes, cfg, scale, progress)
    finally:
        torch.set_num_threads(threads)


def _train(x: torch.Tensor, pairs: Pairs, n_probes: int, cfg: ProbeSettings, scale: Scale,
           progress) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = x.shape[1]
    w = torch.zeros(n_probes, d)
    b = torch.zeros(n_probes)
    state = _AdamState(n_probes, d)
    train = np.flatnonzero(pairs.split == TRAIN)
    t_tok, t_probe = torch.from_numpy(pairs.token[train]), pairs.probe[train]
    t_target = torch.from_numpy(pairs.target[train])
    counts = np.bincount(t_probe, minlength=n_probes)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n_steps = int(np.ceil(counts.max(initial=0) / cfg.batch))
    for epoch in range(cfg.epochs):
        # grouped by probe, shuffled within by a hash of (token, epoch, seed): a probe's batches do not
        # depend on which other probes train beside it
        order = np.lexsort((_mix(pairs.token[train], epoch, cfg.seed), t_probe))
        for s in range(n_steps):
            lens = np.clip(counts - s * cfg.batch, 0, cfg.batch)
            active = np.flatnonzero(lens)
            idx = torch.from_numpy(order[_ranges(offsets[active] + s * cfg.batch, lens[active])])
            probe_np = t_probe[idx.numpy()]
            p = torch.from_numpy(probe_np)
            xb = _rows(x, torch.index_select(t_tok, 0, idx), scale)
            logits = (xb * torch.index_select(w, 0, p)).sum(1) + torch.index_select(b, 0, p)
            # d(mean BCE)/d(logit), each probe's loss averaged over its own batch
            g = (torch.sigmoid(logits) - torch.index_select(t_target, 0, idx)) / torch.from_numpy(
                lens[probe_np].astype(np.float32))
            a = torch.from_numpy(active)
            # the batch holds each active probe's rows contiguously: its gradient is a segment sum
            starts = np.concatenate([[0], np.cumsum(lens[active])[:-1]])
            gw = torch.from_numpy(np.add.reduceat((xb * g[:, None]).numpy(), starts, axis=0))
            gb = torch.from_numpy(np.add.reduceat(g.numpy(), starts))
            wa = torch.index_select(w, 0, a)
            if cfg.l1:
                gw += cfg.l1 * torch.sign(wa)
            if cfg.l2:
                gw += 2 * cfg.l2 * wa
            state.step(w, b, a, wa, gw, gb, cfg.lr)
        if progress is not None:
            progress.update(1)
    return w.numpy(), b.numpy(), accuracy(x, pairs, w, b, n_probes, scale)


class _AdamState:
    """Adam (torch's defaults) applied to some rows only: each probe counts its own steps, and a probe
    with no batch in a step is left exactly as it is."""

    def __init__(self, n: int, d: int, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.m_w, self.v_w = torch.zeros(n, d), torch.zeros(n, d)
        self.m_b, self.v_b = torch.zeros(n), torch.zeros(n)
        self.t = torch.zeros(n)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def step(self, w: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, w_rows: torch.Tensor,
             gw: torch.Tensor, gb: torch.Tensor, lr: float) -> None:
        b1, b2 = self.beta1, self.beta2
        t = torch.index_select(self.t, 0, rows) + 1
        self.t.index_copy_(0, rows, t)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        for param, current, m, v, g, shape in ((w, w_rows, self.m_w, self.v_w, gw, (-1, 1)),
                                               (b, torch.index_select(b, 0, rows), self.m_b, self.v_b, gb, (-1,))):
            m_new = b1 * torch.index_select(m, 0, rows) + (1 - b1) * g
            v_new = b2 * torch.index_select(v, 0, rows) + (1 - b2) * g * g
            m.index_copy_(0, rows, m_new)
            v.index_copy_(0, rows, v_new)
            update = lr * (m_new / c1.view(shape)) / ((v_new / c2.view(shape)).sqrt() + self.eps)
            param.index_copy_(0, rows, current - update)


def _mix(tokens: np.ndarray, epoch: int, seed: int) -> np.ndarray:
    """splitmix64 of each token row, salted with the epoch and the seed: a reproducible shuffle key."""
    z = tokens.astype(np.uint64) + np.uint64((seed * 1_000_003 + epoch + 1) * 0x9E3779B97F4A7C15 % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(start, start + len)`` for every pair, without a Python loop."""
    total = int(lens.sum())
    ends = np.cumsum(lens)
    return np.arange(total) - np.repeat(ends - lens, lens) + np.repeat(starts, lens)


@torch.no_grad()
def accuracy(x: torch.Tensor, pairs: Pairs, w: torch.Tensor, b: torch.Tensor, n_probes: int,
             scale: Scale = None, chunk: int = 65536) -> np.ndarray:
    correct = np.zeros((n_probes, 3))
    total = np.zeros((n_probes, 3))
    for lo in range(0, len(pairs.token), chunk):
        sl = slice(lo, lo + chunk)
        p = torch.from_numpy(pairs.probe[sl])
        logits = (_rows(x, torch.from_numpy(pairs.token[sl]), scale) * torch.index_select(w, 0, p)).sum(1) + b[p]
        right = ((logits > 0).numpy() == (pairs.target[sl] > 0.5)).astype(np.float64)
        flat = pairs.probe[sl] * 3 + pairs.split[sl]
        correct += np.bincount(flat, weights=right, minlength=3 * n_probes).reshape(n_probes, 3)
        total += np.bincount(flat, minlength=3 * n_probes).reshape(n_probes, 3)
    with np.errstate(invalid="ignore"):
        return correct / total


def probe_concepts(x: torch.Tensor, assignments: np.ndarray, types: np.ndarray, k: int, cfg: ProbeSettings,
                   scale: Scale = None, progress=None) -> dict[str, np.ndarray]:
    """Probe and control probe of every concept: accuracies, selectivity and the probe weights."""
    pairs = sample_pairs(assignments, k, cfg.max_members, cfg.seed)
    control = control_targets(pairs, types, cfg.seed)
    both = Pairs(np.concatenate([pairs.token, pairs.token]), np.concatenate([pairs.probe, pairs.probe + k]),
                 np.concatenate([pairs.target, control]), np.concatenate([pairs.split, pairs.split]))
    w, _, acc = train_probes(x, both, 2 * k, cfg, scale, progress)
    members = np.bincount(pairs.probe, weights=pairs.target, minlength=k).astype(np.int64)
    return {"weights": w[:k], "train_accuracy": acc[:k, TRAIN], "dev_accuracy": acc[:k, DEV],
            "accuracy": acc[:k, TEST], "control_accuracy": acc[k:, TEST],
            "selectivity": acc[:k, TEST] - acc[k:, TEST], "members": members,
            "pairs": np.bincount(pairs.probe, minlength=k).astype(np.int64)}
