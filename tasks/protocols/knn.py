"""DINO's weighted k-nearest-neighbour vote on L2-normalised frozen features
(:func:`knn_classify`, :func:`knn_accuracy`): no training at all.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F


from ..metrics import score_predictions

#: DINO's kNN protocol (eval_knn.py): k = 20 ("20 is usually working the best"), T = 0.07
KNN_K = 20
KNN_TEMPERATURE = 0.07
#: the features kNN votes on, one vote each
KNN_POOLS = ("cls", "avg")


@torch.no_grad()
def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 k: int = KNN_K, temperature: float = KNN_TEMPERATURE, num_classes: int | None = None,
                 chunk: int = 256) -> torch.Tensor:
    """Weighted kNN predictions ``(n_test,)`` int64, on ``test_feats``' device.

    DINO's protocol, as its public ``eval_knn.py`` does it (facebookresearch/dino,
    commit 7c446df, checked for this function): features are L2-normalised (lines
    81-82), similarity is their dot product, i.e. the cosine (line 158), the ``k``
    most similar training samples vote (line 159) with weight ``exp(sim / T)``
    (line 165) summed per class (lines 166-172), and the class with the largest sum
    wins (line 173). Defaults k = 20 and T = 0.07: its ``--nb_knn`` (20 among 10, 20,
    100, 200; "20 is usually working the best", lines 194-195) and ``--temperature``
    (line 196). ``k`` larger than the training set is clipped to its size (our choice;
    DINO's ``topk`` would fail). Ties go to the lowest class index (``argmax``).

    ``chunk`` test samples are scored at a time, so memory is ``chunk x n_train``
    similarities whatever the test set's size; predictions do not depend on it.
    """
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"features must be (n, d) with one d, got {tuple(train_feats.shape)} and "
                         f"{tuple(test_feats.shape)}")
    if len(train_labels) != len(train_feats):
        raise ValueError(f"{len(train_feats)} training features but {len(train_labels)} labels")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    device = test_feats.device
    train = F.normalize(train_feats.float().to(device), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    labels = train_labels.to(device=device, dtype=torch.int64)
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    k = min(int(k), train.shape[0])
    preds = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start:start + chunk] @ train.T                # (b, n_train) cosines
        top_sim, top_idx = sim.topk(k, dim=1, largest=True, sorted=True)
        weights = (top_sim / temperature).exp()                  # (b, k)
        votes = torch.zeros(top_sim.shape[0], num_classes, device=device, dtype=weights.dtype)
        votes.scatter_add_(1, labels[top_idx], weights)          # (b, classes)
        preds.append(votes.argmax(dim=1))
    if not preds:
        return torch.zeros(0, dtype=torch.int64, device=device)
    return torch.cat(preds)


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, k: int = KNN_K, temperature: float = KNN_TEMPERATURE,
                 num_classes: int | None = None, chunk: int = 256) -> float:
    """Top-1 accuracy (%) of :func:`knn_classify`, by scikit-learn's ``accuracy_score``."""
    preds = knn_classify(train_feats, train_labels, test_feats, k=k, temperature=temperature,
                         num_classes=num_classes, chunk=chunk)
    return score_predictions(test_labels.cpu().numpy(), preds.cpu().numpy(), ("acc1",))["acc1"]
