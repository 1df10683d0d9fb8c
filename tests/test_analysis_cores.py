"""The analysis steps' array cores on planted data with known answers (no run store)."""

import numpy as np
import pytest
import torch

from cluster_service.analysis import align, layers, neurons, probe, score, stability
from cluster_service.cluster.approx import approx_ward


def planted(n=2000, d=16, k=5, neuron=7, concept=2, seed=0):
    """Random vectors; the members of ``concept`` carry a large value on ``neuron`` alone; word types are
    drawn independently of the vectors (so the control task cannot be learnt)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    a = rng.integers(0, k, n)
    x[a == concept, neuron] += 6.0  # separable: Bayes accuracy 0.9987
    types = rng.integers(0, 40, n)
    return x, a, types


def test_planted_neuron_ranked_first_by_probeless_and_probe():
    x, a, types = planted()
    sums, counts = neurons.concept_sums(x, a, 5)
    np.testing.assert_allclose(sums[2], x[a == 2].sum(0), rtol=1e-5)
    assert neurons.top_neurons(neurons.probeless(sums, counts), 3)[2, 0] == 7
    res = probe.probe_concepts(torch.from_numpy(x), a, types, 5, probe.ProbeSettings())
    assert neurons.top_neurons(neurons.weight_mass(res["weights"]), 3)[2, 0] == 7
    # a separable concept: probe ≈ 1; its control (random labels per word type) ≈ chance
    assert res["accuracy"][2] >= 0.97
    assert 0.3 <= res["control_accuracy"][2] <= 0.7
    assert res["selectivity"][2] >= 0.3
    # concepts carried by no neuron are at chance, and members/non-members are balanced
    assert np.all(res["accuracy"][[0, 1, 3, 4]] <= 0.7)
    assert (res["pairs"] == 2 * res["members"]).all()


def test_chunked_sums_and_parent_overlap():
    x, a, _ = planted(n=9000, k=8)
    small, _ = neurons.concept_sums(x[:100], a[:100], 8)
    big, counts = neurons.concept_sums(x, a, 8)  # > 4096 rows: the sorted reduction
    np.testing.assert_allclose(big, np.stack([x[a == c].sum(0) for c in range(8)]), rtol=1e-4, atol=1e-3)
    parent = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    psums, pcounts = neurons.parent_sums(big, counts, parent, 4)
    np.testing.assert_allclose(psums[1], x[(a == 2) | (a == 3)].sum(0), rtol=1e-4, atol=1e-3)
    assert pcounts[1] == ((a == 2) | (a == 3)).sum()
    top = np.array([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_allclose(neurons.overlap(top, np.array([[3, 2, 9], [7, 8, 9]])), [2 / 3, 0])


def test_probe_batches_follow_each_probe_alone():
    """Training many probes together gives each the weights it gets when trained alone."""
    x, a, types = planted(n=1200, k=3)
    pairs = probe.sample_pairs(a, 3, 5000, 0)
    cfg = probe.ProbeSettings(epochs=3, batch=64, lr=0.01)
    w_all, _, _ = probe.train_probes(torch.from_numpy(x), pairs, 3, cfg)
    keep = pairs.probe == 1
    alone = probe.Pairs(pairs.token[keep], np.zeros(keep.sum(), np.int64), pairs.target[keep], pairs.split[keep])
    w_one, _, _ = probe.train_probes(torch.from_numpy(x), alone, 1, cfg)
    np.testing.assert_allclose(w_all[1], w_one[0], atol=1e-5)
    assert np.abs(w_all[1]).sum() > 0.1  # it did train
    w_again, _, _ = probe.train_probes(torch.from_numpy(x), pairs, 3, cfg)
    assert np.array_equal(w_all, w_again)  # deterministic


def test_stable_clusters_score_high_random_ones_low():
    rng = np.random.default_rng(0)
    k, n, d = 4, 800, 8
    truth = rng.integers(0, k, n)
    blobs = (rng.normal(scale=10.0, size=(k, d))[truth] + rng.normal(size=(n, d))).astype(np.float32)
    noise = rng.normal(size=(n, d)).astype(np.float32)

    def cluster(x, kk):
        return approx_ward(x, [kk]).assignments(kk)

    stable = stability.bootstrap(blobs, cluster(blobs, k), k, cluster, 3, 0.9, seed=1)
    unstable = stability.bootstrap(noise, rng.integers(0, k, n), k, cluster, 3, 0.9, seed=1)
    assert stable.mean() > 0.95
    assert unstable.mean() < 0.5
    assert stable.shape == (3, k)


def test_best_jaccard_known_values():
    ref = np.array([0, 0, 0, 0, 1, 1])
    rep = np.array([5, 5, 5, 2, 2, 2])
    np.testing.assert_allclose(stability.best_jaccard(ref, rep, 3), [3 / 4, 2 / 3, np.nan])


def test_split_merge_persist_between_layers():
    a = np.array([0] * 100 + [1] * 100 + [2] * 30 + [3] * 30)
    b = np.array([0] * 50 + [1] * 50 + [2] * 100 + [3] * 60)
    m = layers.matches(a, b, 4, 4)
    assert m["fate"].tolist() == ["splits", "persists", "merges", "merges"]
    assert m["best_match"][1] == 2 and m["jaccard"][1] == 1.0
    assert m["parts"][0] == 2
    ia, ib, n = layers.contingency(a, b, 4)
    assert sorted(zip(ia.tolist(), ib.tolist(), n.tolist(), strict=True)) == [(0, 0, 50), (0, 1, 50), (1, 2, 100),
                                                                               (2, 3, 30), (3, 3, 30)]
    scattered = layers.matches(np.zeros(100, int), np.arange(100) % 10, 1, 10)
    assert scattered["fate"].tolist() == ["scatters"]


def test_alignment_rule_and_coverage():
    codes, names = align.encode(["NOUN"] * 10 + ["VERB"] * 9 + ["NOUN"] + [""] * 5)
    a = np.array([0] * 10 + [1] * 10 + [2] * 5)
    best, share = align.majority(codes, a, 3, len(names))
    assert [names[b] if b >= 0 else None for b in best] == ["NOUN", "VERB", None]
    np.testing.assert_allclose(share, [1.0, 0.9, 0.0])
    aligned = np.where(share >= 0.9, best, -1)
    cover = align.coverage(codes, a, aligned, len(names))
    assert cover[names.index("NOUN")] == pytest.approx(10 / 11) and cover[names.index("VERB")] == 1.0
    assert align.label_agrees("PROPN/GPE: London, Paris", "GPE") and align.label_agrees("Nouns for animals", "NOUN")
    assert align.label_agrees("cities", "VERB") is False and align.label_agrees(None, "NOUN") is None


def test_spacy_tags_on_hand_checked_sentences():
    sentences = [["The", "cat", "sat", "on", "the", "mat", "."], ["She", "visited", "Paris", "in", "May", "."]]
    tags = align.tag_sentences(sentences, processes=1)
    assert [t[0] for t in tags[0]] == ["DET", "NOUN", "VERB", "ADP", "DET", "NOUN", "PUNCT"]
    assert [t[1] for t in tags[0]] == ["DT", "NN", "VBD", "IN", "DT", "NN", "."]
    assert [t[0] for t in tags[1]][:3] == ["PRON", "VERB", "PROPN"]
    assert tags[1][2][2] == "GPE" and tags[1][4][2] == "DATE" and tags[1][1][2] == ""


def test_answer_parsing_metrics_and_control_permutation():
    assert score.parse_answer("Sure: [1, 0, 1, 1, 0]", 5) == [1, 0, 1, 1, 0]
    assert score.parse_answer("[1, 0]", 5) is None
    assert score.parse_answer("[1, 2, 0, 0, 1]", 5) is None
    assert score.parse_answer("maybe", 5) is None
    m = score.metrics(np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 1], bool))
    assert m == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "balanced_accuracy": 0.5}
    perfect = score.metrics(np.array([1, 0, 1, 0], bool), np.array([1, 0, 1, 0], bool))
    assert perfect["balanced_accuracy"] == 1.0 and perfect["f1"] == 1.0
    perm = score.derangement(7, np.random.default_rng(0))
    assert sorted(perm.tolist()) == list(range(7)) and not (perm == np.arange(7)).any()
    text = score.messages("animals", ["a <<dog>> ran", "the <<car>> stopped"])[1]["content"]
    assert text.startswith(score.LABEL_LINE + "animals") and "2. the <<car>> stopped" in text


def test_examples_mix_members_random_and_hard_nonmembers():
    a = np.repeat(np.arange(4), 50)
    members = [np.flatnonzero(a == c) for c in range(4)]
    centroids = np.array([[0.0], [1.0], [10.0], [11.0]])
    parent = np.array([0, 0, 1, 1])
    hard = score.hard_pool(0, parent, centroids, nearest=1)
    assert hard == [1]
    shown = score.choose(0, members, len(a), a, hard, 20, 20, np.random.default_rng(0))
    rows = [s.row for s in shown]
    assert len(set(rows)) == 40 and sum(s.member for s in shown) == 20
    assert all((a[s.row] == 0) == s.member for s in shown)
    assert sum(a[s.row] == 1 for s in shown) >= 10  # half the non-members are hard (the sibling)


def test_probeless_in_standard_units_is_not_led_by_wide_neurons():
    x, a, _ = planted()
    x[:, 0] *= 500.0  # a wide neuron that carries nothing
    sums, counts = neurons.concept_sums(x, a, 5)
    std = x.std(axis=0)
    assert neurons.top_neurons(neurons.probeless(sums, counts), 1)[0, 0] == 0  # raw: the wide neuron leads
    assert neurons.top_neurons(neurons.probeless(sums, counts, std), 1)[2, 0] == 7
    assert neurons.top_neurons(neurons.probeless(sums, counts, std), 1)[0, 0] != 0
