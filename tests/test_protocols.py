"""Frozen-encoder protocols (tasks/protocols.py): kNN, feature extraction, linear probe."""
import re

import pytest
import torch
from scipy import stats

from encoder_watch import state_hash
from methods.backbone import build_encoder
from tasks.protocols import (LinearProbePlan, cached_features, extract_features, feature_cache_key,
                             frozen_metric_names, knn_accuracy, knn_classify, probe_encoder,
                             train_linear_probe)


def clusters(n_per_class: int, num_classes: int, dim: int, seed: int, spread: float = 0.1):
    """Points around one orthogonal direction per class: separable by cosine."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    centres = torch.eye(dim)[:num_classes] * 5.0
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return feats, labels


def quiet(*_):
    pass


# ------------------------------------------------------------------------ kNN
def test_knn_separable_classes_are_all_right():
    train, ytr = clusters(30, 5, 16, seed=0)
    test, yte = clusters(20, 5, 16, seed=1)
    assert knn_accuracy(train, ytr, test, yte) == 100.0


def test_knn_on_random_labels_is_at_chance():
    # test labels drawn independently of everything: each vote is right with
    # probability exactly 1/C, so accuracy x n ~ Binomial(n, 1/C)
    train, ytr = clusters(40, 10, 16, seed=0)
    test, _ = clusters(200, 10, 16, seed=1)
    g = torch.Generator().manual_seed(2)
    random_labels = torch.randint(0, 10, (len(test),), generator=g)
    n = len(test)
    low, high = stats.binom.interval(1 - 1e-6, n, 0.1)
    acc = knn_accuracy(train, ytr, test, random_labels)
    assert 100.0 * low / n <= acc <= 100.0 * high / n


def test_weighting_decides_the_vote():
    # query (1, 0); one neighbour of class 0 at cosine 1, two of class 1 at cosine 0.5
    train = torch.tensor([[1.0, 0.0], [0.5, 3 ** 0.5 / 2], [0.5, -(3 ** 0.5) / 2]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[2.0, 0.0]])            # normalised inside
    # T = 0.07: class 0 gets e^(1/0.07) = 1.6e6, class 1 gets 2 e^(0.5/0.07) = 2.5e3
    assert knn_classify(train, labels, query, k=3).tolist() == [0]
    # T = 10: e^0.1 = 1.105 < 2 e^0.05 = 2.103, the unweighted majority (class 1) wins
    assert knn_classify(train, labels, query, k=3, temperature=10.0).tolist() == [1]
    # k = 1: only the nearest votes
    assert knn_classify(train, labels, query, k=1, temperature=10.0).tolist() == [0]


def test_knn_chunks_do_not_change_predictions():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(300, 8, generator=g), torch.randn(97, 8, generator=g)
    labels = torch.randint(0, 7, (300,), generator=g)
    whole = knn_classify(train, labels, test, chunk=1000)
    for chunk in (1, 7, 32):
        assert torch.equal(knn_classify(train, labels, test, chunk=chunk), whole)
    assert whole.dtype == torch.int64 and whole.shape == (97,)
    # k above the training set's size is clipped
    assert knn_classify(train[:5], labels[:5], test, k=20).shape == (97,)


class StageEncoder(torch.nn.Module):
    """A stand-in for the 1D encoder: every token of a window is its stage one-hot (x 5)
    plus small noise, the stage read from the window's first sample. Its [CLS] and mean
    tokens separate the five stages perfectly."""
    num_prefix_tokens = 1

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(5.0))

    def forward_features(self, x):                       # x (B, 6, 300)
        onehot = torch.nn.functional.one_hot(x[:, 0, 0].long(), 5).float() * self.scale
        noise = 0.1 * x[:, 1, :155].reshape(-1, 31, 5)
        return onehot[:, None, :] + noise                # (B, 1 + 30 tokens, 5)


def windows(stages, shown=None, seed=0):
    """(6, 300) noise windows labelled ``stages``; the encoder reads ``shown`` (default: the label)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, y in enumerate(stages):
        x = torch.randn(6, 300, generator=g)
        x[0, 0] = float(y if shown is None else shown[i])
        out.append((x, y))
    return out


def test_knn_kappa_on_features_that_separate_the_sleep_stages():
    train = windows([s for s in range(5) for _ in range(6)], seed=0)
    labels = [s for s in range(5) for _ in range(2)]
    names = frozen_metric_names("knn", ("kappa", "acc1"))
    assert names == ("knn_kappa_cls", "knn_acc1_cls", "knn_kappa_avg", "knn_acc1_avg")
    out = probe_encoder(StageEncoder(), train, windows(labels, seed=1), "knn", batch_size=8,
                        num_classes=5, scores=("kappa", "acc1"))
    assert out == {"knn_kappa_cls": 1.0, "knn_acc1_cls": 100.0, "knn_kappa_avg": 1.0,
                   "knn_acc1_avg": 100.0}
    # one stage-0 window looks like stage 1: predictions (1,0,1,1,2,2,3,3,4,4); by hand
    # p_o = 9/10, p_e = .2 x .1 + .2 x .3 + 3 x .2 x .2 = .2, kappa = (.9 - .2) / .8 = .875
    shown = [1, *labels[1:]]
    out = probe_encoder(StageEncoder(), train, windows(labels, shown, seed=1), "knn", batch_size=8,
                        num_classes=5, scores=("kappa", "acc1"))
    assert out["knn_kappa_cls"] == pytest.approx(0.875) and out["knn_acc1_cls"] == pytest.approx(90.0)
    assert out["knn_kappa_avg"] == pytest.approx(0.875)
    with pytest.raises(ValueError, match="scores"):
        probe_encoder(StageEncoder(), train, train, "knn", scores=("auc",))


# ------------------------------------------------------------------------ features
def images(n: int, num_classes: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    return [(x[i], i % num_classes) for i in range(n)]


@pytest.mark.parametrize("pos_embed", ["none", "learn"])
def test_extract_features_take_the_right_tokens(pos_embed):
    torch.manual_seed(0)
    encoder = build_encoder("vit_micro", img_size=32, patch_size=4, pos_embed=pos_embed)
    data = images(10)
    encoder.train()
    cls, labels = extract_features(encoder, data, batch_size=4, pool="cls")
    avg, _ = extract_features(encoder, data, batch_size=3, pool="avg")
    both, _ = extract_features(encoder, data, batch_size=10, pool="cls+avg")
    assert encoder.training  # mode restored
    encoder.eval()
    with torch.no_grad():
        tokens = encoder.forward_features(torch.stack([x for x, _ in data]))
    assert tokens.shape[1] == 1 + 64 and encoder.num_prefix_tokens == 1
    assert cls.dtype == torch.float32 and cls.shape == (10, 96)
    torch.testing.assert_close(cls, tokens[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(avg, tokens[:, 1:].mean(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both, torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1),
                               rtol=1e-5, atol=1e-5)
    assert labels.dtype == torch.int64 and labels.tolist() == [i % 2 for i in range(10)]
    with pytest.raises(ValueError, match="pool"):
        extract_features(encoder, data, batch_size=4, pool="max")


def test_feature_cache_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 0])

    key = feature_cache_key(checkpoint="/x/encoder.pth", data="cifar100", split="train", pool="cls")
    assert key.startswith("feat__train__cls__")
    first = cached_features(tmp_path, key, compute)
    second = cached_features(tmp_path, key, compute)
    assert len(calls) == 1
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert [p.name for p in tmp_path.iterdir()] == [f"{key}.pt"]  # no temporary file left
    with pytest.raises(ValueError):
        cached_features(tmp_path, "../escape", compute)


# ------------------------------------------------------------------------ linear probe
@pytest.mark.parametrize("standardize,base_lr", [(False, 0.05), (True, 0.5)])
def test_linear_probe_separates_separable_features(tmp_path, standardize, base_lr):
    # standardised features are ~2.4x smaller along the class directions: a larger lr
    train, ytr = clusters(40, 4, 16, seed=0, spread=1.0)
    test, yte = clusters(25, 4, 16, seed=1, spread=1.0)
    plan = LinearProbePlan(epochs=15, global_batch_size=32, base_lr=base_lr, standardize=standardize)
    out = train_linear_probe(train, ytr, test, yte, num_classes=4, work_dir=tmp_path / "probe",
                             schedule=plan, batch_per_process=32, seed=0, log=quiet)
    assert out["acc1"] >= 99.0
    # about ten checkpoints a probe: every ceil(15 / 10) = 2 epochs and the last (8, not 15)
    log = next((tmp_path / "probe").glob("*/*.log")).read_text()
    assert [int(n) for n in re.findall(r"Saving checkpoint at (\d+) epochs", log)] == [*range(2, 15, 2), 15]


def test_probe_encoder_leaves_the_encoder_alone(tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder("vit_micro", img_size=32, patch_size=4)
    train_set, test_set = images(32, seed=0), images(16, seed=1)
    before = state_hash(encoder)
    requires = [p.requires_grad for p in encoder.parameters()]
    cache = tmp_path / "features"
    plan = LinearProbePlan(epochs=2, global_batch_size=16)
    out = probe_encoder(encoder, train_set, test_set, "linear", batch_size=8, work_dir=tmp_path / "lin",
                        schedule=plan, batch_per_process=16, cache_dir=cache, cache_key="enc0", log=quiet)
    assert set(out) == {"linear_acc1"} and 0.0 <= out["linear_acc1"] <= 100.0
    assert state_hash(encoder) == before
    assert [p.requires_grad for p in encoder.parameters()] == requires
    # the kNN run reads the features the linear probe cached (cls and avg of both splits)
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f"enc0__{s}__{p}.pt" for s in ("train", "test") for p in ("cls", "avg"))
    knn = probe_encoder(encoder, train_set, test_set, "knn", batch_size=8, cache_dir=cache,
                        cache_key="enc0", log=quiet)
    assert set(knn) == {"knn_acc1_cls", "knn_acc1_avg"}
    uncached = probe_encoder(encoder, train_set, test_set, "knn", batch_size=8, log=quiet)
    assert uncached == knn
    assert state_hash(encoder) == before
    with pytest.raises(ValueError, match="protocol"):
        probe_encoder(encoder, train_set, test_set, "finetune")
