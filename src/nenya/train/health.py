"""Is the representation learning? Label-free health metrics, kNN accuracy, and the collapse check.

Computed on a fixed sample of the validation partition at every validation step, for the latents
(the head's L2-normalised output) and for the encoder features:

- **alignment** (Wang & Isola, 2020): ``mean ||z1 - z2||²`` over the two augmented views of an image
  (L2-normalised; 0 = views map to the same point, 4 = opposite points).
- **uniformity** (Wang & Isola, 2020): ``log mean exp(-2 ||zi - zj||²)`` over distinct pairs of
  normalised vectors (lower = spread more evenly over the sphere; 0 = all on one point).
- **effective rank** (RankMe, Garrido et al., 2023): ``exp(-Σ p_k log p_k)`` with ``p_k = σ_k / Σ σ``
  the normalised singular values of the (N, D) matrix (not centred); between 1 (collapsed onto one
  direction) and ``min(N, D)``.
- **pairwise cosine similarity**: mean and standard deviation over distinct pairs (all near 1 =
  collapsed).
- **kNN accuracy** with labels: the majority label of each validation item's ``k`` most
  cosine-similar train items (ties to the smaller class id).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

__all__ = [
    "alignment",
    "uniformity",
    "effective_rank",
    "cosine_stats",
    "knn_accuracy",
    "representation_metrics",
    "collapse_message",
    "METRIC_FIELDS",
    "HealthProbe",
    "HealthOptions",
    "metrics_line",
    "snapshot_plot",
]

#: the metric columns of ``learning_curve.csv`` (on ``valid_epoch`` rows), in order
METRIC_FIELDS = (
    "alignment",
    "uniformity",
    "erank_latent",
    "erank_feature",
    "cos_mean",
    "cos_std",
    "feature_cos_mean",
    "knn_accuracy",
)

COLLAPSED_RANK = 1.5
#: an untrained ReLU network already sits near 0.97 (a ResNet-18 on 16x16 digits at 0.992); collapsed
#: runs reach 0.997+
COLLAPSED_COS = 0.99
#: with an untrained baseline ``c0``: collapsed when the mean cosine has gone this share of the way
#: from ``c0`` to 1, ``(cos - c0) / (1 - c0)`` (and is over :data:`COLLAPSED_COS`)
COLLAPSED_SHARE = 0.9


@dataclass(frozen=True)
class HealthOptions:
    """What training measures at each validation step (see the module docstring).

    Attributes:
        eval_column: a metadata column whose values are labels for the kNN accuracy (None: the
            opts' ``label_column`` when SupCon or set, else no kNN accuracy).
        snapshot_every: every this many epochs (and before the first), a PNG of the validation
            sample's latents (0: none).
        snapshot: ``pca`` (fast) or ``umap``.
        snapshot_color: the metadata column that colours the snapshots (default: the eval column).
        sample: validation items measured; bank: train items in the kNN memory bank; k: neighbours.
        enabled: measure at all.
    """

    eval_column: str | None = None
    snapshot_every: int = 0
    snapshot: str = "pca"
    snapshot_color: str | None = None
    sample: int = 512
    bank: int = 2048
    k: int = 20
    enabled: bool = True


def _t(x) -> torch.Tensor:
    return x.detach().double() if torch.is_tensor(x) else torch.as_tensor(np.asarray(x), dtype=torch.float64)


def alignment(z1, z2) -> float:
    """``mean ||z1_i - z2_i||²`` of L2-normalised paired rows."""
    a, b = F.normalize(_t(z1), dim=1), F.normalize(_t(z2), dim=1)
    return float((a - b).pow(2).sum(dim=1).mean())


def uniformity(z, t: float = 2.0) -> float:
    """``log mean_{i<j} exp(-t ||z_i - z_j||²)`` of L2-normalised rows."""
    x = F.normalize(_t(z), dim=1)
    d2 = torch.pdist(x).pow(2)
    return float(torch.logsumexp(-t * d2, dim=0) - np.log(len(d2)))


def effective_rank(z) -> float:
    """RankMe: ``exp`` of the entropy of the normalised singular values of ``z`` (N, D)."""
    s = torch.linalg.svdvals(_t(z))
    total = s.sum()
    if total <= 0:
        return 1.0
    p = s / total + 1e-12
    return float(torch.exp(-(p * torch.log(p)).sum()))


def cosine_stats(z) -> tuple[float, float]:
    """Mean and standard deviation of the cosine similarity over distinct pairs of rows."""
    x = F.normalize(_t(z), dim=1)
    sim = x @ x.T
    iu = torch.triu_indices(len(x), len(x), offset=1)
    vals = sim[iu[0], iu[1]]
    return float(vals.mean()), float(vals.std(unbiased=False))


def knn_accuracy(bank, bank_labels, query, query_labels, k: int = 20, chunk: int = 1024) -> float:
    """Share of ``query`` rows whose ``k`` most cosine-similar ``bank`` rows vote for their label."""
    b = F.normalize(_t(bank), dim=1)
    bl = torch.as_tensor(np.asarray(bank_labels), dtype=torch.long)
    ql = torch.as_tensor(np.asarray(query_labels), dtype=torch.long)
    q_all = F.normalize(_t(query), dim=1)
    classes = int(max(bl.max(), ql.max())) + 1
    k = min(int(k), len(b))
    correct = 0
    for s in range(0, len(q_all), chunk):
        sim = q_all[s : s + chunk] @ b.T
        top = sim.topk(k, dim=1).indices
        votes = F.one_hot(bl[top], classes).sum(dim=1)
        correct += int((votes.argmax(dim=1) == ql[s : s + chunk]).sum())
    return correct / max(len(q_all), 1)


def representation_metrics(
    latent1, latent2, feature1, *, bank=None, bank_labels=None, labels=None, k: int = 20
) -> dict[str, float]:
    """Every metric of :data:`METRIC_FIELDS` from the latents of two views (``latent1``,
    ``latent2``), the encoder features of the first view, and optionally a labelled bank of train
    latents for the kNN accuracy (NaN without)."""
    cos_mean, cos_std = cosine_stats(latent1)
    out = {
        "alignment": alignment(latent1, latent2),
        "uniformity": uniformity(latent1),
        "erank_latent": effective_rank(latent1),
        "erank_feature": effective_rank(feature1),
        "cos_mean": cos_mean,
        "cos_std": cos_std,
        "feature_cos_mean": cosine_stats(feature1)[0],
        "knn_accuracy": float("nan"),
    }
    if bank is not None and labels is not None and bank_labels is not None:
        out["knn_accuracy"] = knn_accuracy(bank, bank_labels, latent1, labels, k=k)
    return out


def collapse_message(metrics: Mapping[str, float], baseline: Mapping[str, float] | None = None) -> str | None:
    """A warning when the latents look collapsed, saying what to change; None for a healthy run.

    Collapsed: an effective rank under 1.5, or a mean pairwise cosine over 0.99 that has also gone
    90% of the way from the untrained model's (``baseline``, the metrics of epoch 0) to 1:
    ``(cos - c0) / (1 - c0) > 0.9``. An untrained network can already sit above 0.99 (a ResNet-18
    on 16x16 digits: 0.992), so a healthy run that learns slowly and stays near its start is not
    flagged, while one at 0.999997 is. Without a baseline (None, say a run resumed without its
    ``learning_curve.csv``, or one whose untrained cosine is not below 1) the cosine rule is the
    absolute one: over 0.99.
    """
    rank, cos = metrics.get("erank_latent", np.nan), metrics.get("cos_mean", np.nan)
    c0 = np.nan if baseline is None else baseline.get("cos_mean", np.nan)
    if not np.isfinite(c0) or c0 >= 1 - 1e-9:  # no baseline, or one that is already at 1
        c0 = np.nan
    moved = (cos - c0) / (1 - c0)  # NaN without a baseline
    by_cos = cos > COLLAPSED_COS and (np.isnan(c0) or moved > COLLAPSED_SHARE)
    if not (rank < COLLAPSED_RANK or by_cos):
        return None
    since = "" if np.isnan(c0) else f", {_cosine(c0)} untrained"
    return (
        f"the latents look collapsed (effective rank {rank:.2f}, mean pairwise cosine {_cosine(cos)}{since}): "
        "every image maps to nearly the same vector, whatever the loss says. Lower learning_rate, raise temp "
        "(SimCLR/SupCon temperature) or batch_size_train, check that the augmentations are not too weak "
        "or too strong, and check the inputs are not constant"
    )


def _cosine(c: float) -> str:
    """A mean cosine with the digits that tell it from 1 (0.992, 0.999997)."""
    return f"{c:.3f}" if not c > 0.999 or c >= 1 else f"{c:.6f}"


def _sample_rows(n: int, m: int) -> np.ndarray:
    """``m`` rows spread evenly over ``n`` (all when ``n <= m``): the same every epoch and run."""
    return np.arange(n) if n <= m else np.linspace(0, n - 1, m).round().astype(np.int64)


def _images(ds, rows: np.ndarray) -> torch.Tensor:
    batch = ds.__getitems__(rows)
    return (batch[0] if isinstance(batch, tuple) else batch).float()


def _named_labels(ds, column: str, rows: np.ndarray) -> np.ndarray:
    from nenya.train.data import load_labels

    labels, names = load_labels(ds, column)
    return np.asarray(names, dtype=object)[labels[rows]]


def _column(ds, column: str, rows: np.ndarray) -> np.ndarray:
    """A metadata column's values at ``rows``: numbers when they all parse as numbers, else text."""
    values = _named_labels(ds, column, rows)
    try:
        return values.astype(np.float64)
    except ValueError:
        return values


class HealthProbe:
    """Measures :func:`representation_metrics` of a model on fixed samples of the data.

    The validation sample (``sample`` items spread over the partition) and its two augmented views
    are drawn once, with a fixed seed, so the figures of every epoch (and of a resumed run) are
    comparable. With ``eval_column``, the train sample (``bank`` items) with its labels is the kNN
    memory bank.
    """

    def __init__(
        self,
        valid_ds,
        train_ds,
        aug,
        device: torch.device,
        *,
        amp_dtype: torch.dtype | None = None,
        eval_column: str | None = None,
        color_column: str | None = None,
        sample: int = 512,
        bank: int = 2048,
        k: int = 20,
        batch: int = 256,
        seed: int = 0,
    ) -> None:
        from nenya.train.augment import augment, two_views

        self.device, self.amp_dtype, self.k, self.batch = device, amp_dtype, k, batch
        rows = _sample_rows(len(valid_ds), sample)
        x = _images(valid_ds, rows)
        gen = torch.Generator().manual_seed(seed + 2024)
        noise = torch.Generator().manual_seed(seed + 2025)
        views = two_views(x, aug, gen, noise) if aug is not None else torch.cat([x, x])
        self.view1, self.view2 = views[: len(x)], views[len(x) :]
        self.labels = self.bank_x = self.bank_labels = None
        self.names: list[str] = []
        if eval_column:
            bank_rows = _sample_rows(len(train_ds), bank)
            valid_names = _named_labels(valid_ds, eval_column, rows)
            train_names = _named_labels(train_ds, eval_column, bank_rows)
            self.names = sorted(set(valid_names) | set(train_names))
            index = {n: i for i, n in enumerate(self.names)}
            self.labels = np.array([index[n] for n in valid_names])
            self.bank_labels = np.array([index[n] for n in train_names])
            # the bank is one augmented view too (crops and channels as the model is trained on)
            bank_x = _images(train_ds, bank_rows)
            self.bank_x = augment(bank_x, aug, gen, noise) if aug is not None else bank_x
        self.label_names = None if self.labels is None else np.asarray(self.names, dtype=object)[self.labels]
        #: what colours the snapshots: ``color_column``'s values, else the eval labels, else None
        self.colors = _column(valid_ds, color_column, rows) if color_column else self.label_names
        self.color_name = color_column or eval_column

    def _forward(self, model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, encoder features) of ``x``, batch by batch, in float32 on the CPU."""
        from nenya.device import autocast

        enc = getattr(model, "encoder", None)
        head = getattr(model, "head", None)
        lat, feat = [], []
        for s in range(0, len(x), self.batch):
            xb = x[s : s + self.batch].to(self.device)
            with autocast(self.device, self.amp_dtype):
                if enc is not None and head is not None:
                    f = enc(xb)
                    z = F.normalize(head(f).float(), dim=1)
                else:
                    z = f = model(xb)
            lat.append(z.float().cpu())
            feat.append(f.float().cpu())
        return torch.cat(lat), torch.cat(feat)

    @torch.no_grad()
    def measure(self, model: torch.nn.Module) -> tuple[dict[str, float], np.ndarray]:
        """The metrics of ``model`` (put in eval mode, and back), and the first view's latents."""
        was_training = model.training
        model.eval()
        try:
            z1, f1 = self._forward(model, self.view1)
            z2, _ = self._forward(model, self.view2)
            bank = None if self.bank_x is None else self._forward(model, self.bank_x)[0]
        finally:
            model.train(was_training)
        metrics = representation_metrics(
            z1, z2, f1, bank=bank, bank_labels=self.bank_labels, labels=self.labels, k=self.k
        )
        return metrics, z1.numpy()


def metrics_line(m: Mapping[str, float]) -> str:
    """The metrics in one short line for the log."""
    parts = [
        f"effective rank {m['erank_latent']:.1f} (features {m['erank_feature']:.1f})",
        f"alignment {m['alignment']:.3f}",
        f"uniformity {m['uniformity']:.3f}",
        f"cosine {m['cos_mean']:.3f} ± {m['cos_std']:.3f}",
    ]
    if np.isfinite(m.get("knn_accuracy", np.nan)):
        parts.append(f"kNN accuracy {m['knn_accuracy']:.3f}")
    return ", ".join(parts)


def snapshot_plot(
    latents: np.ndarray, path: str, *, how: str = "pca", labels=None, title: str = "", color_name: str | None = None
) -> str:
    """A PNG of the 2-D PCA (or UMAP) of ``latents``, coloured by ``labels`` when given."""
    from nenya.analysis.plots import scatter_plot

    if how == "umap":
        from nenya.analysis.umap import fit_umap

        xy, (xl, yl) = fit_umap(latents, seed=0).embedding, ("U0", "U1")
    else:
        from nenya.analysis.pca import pca

        xy, (xl, yl) = pca(latents, 2).scores, ("PC0", "PC1")
    name = (color_name or "label") if labels is not None else None
    return scatter_plot(xy[:, 0], xy[:, 1], path, color=labels, color_name=name, title=title, xlabel=xl, ylabel=yl)
