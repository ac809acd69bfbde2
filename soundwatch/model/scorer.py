"""The ONE window -> anomaly-score function, used by training (validation, thresholds),
``evaluate`` and the scoring worker (through :class:`soundwatch.model.registry.LoadedModel`).

Score kinds (high = anomalous, float64):

* ``neglogp`` (clp): ``-log sum_{c in classes(id)} p(c | window)`` with ``p`` the softmax of the
  margin-free ArcFace logits. With machine IDs as classes this is ``-log p(ID)``; when a type's
  classes are section/domain/attribute labels, a machine owns several classes and the score is
  the probability of belonging to *any* of them.
* ``knn`` (clp): mean cosine distance of the window embedding to its ``k`` nearest embeddings
  among that machine's training-normal windows (a non-parametric density on the unit sphere).
* ``recon`` (ae): mean squared reconstruction error over the window's 5-frame contexts.
* ``stats`` (``stats-*``): the density score of :class:`soundwatch.model.stats.StatsModel`
  (Mahalanobis or k-NN distance of the window's standardised per-band statistics).

Unknown machine IDs of a known type never raise; they get a documented type-level fallback:
``neglogp`` -> ``-log max_c p(c)`` (distance to the closest known class), ``knn`` -> the kNN
distance against the union of all machines' banks, ``recon`` -> unchanged (the AE is ID-free),
``stats`` -> the union density ``"*"`` of the type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from soundwatch.model.device import autocast
from soundwatch.model.networks import AEConfig, ArcMarginHead, Encoder, EncoderConfig, FrameAE
from soundwatch.model.stats import StatsModel

SCORE_KINDS = ("neglogp", "knn", "recon", "stats")
BANK_LIMIT = 4096  # embeddings kept per machine: bounds artifact size and kNN cost


class Scorer(Protocol):
    """What a loaded model needs of its window scorer, whatever the score kind (see :mod:`soundwatch.model.kinds`)."""

    method: str
    score_kind: str
    device: torch.device

    def score(self, windows: np.ndarray, machine_ids: Sequence[str], kind: str | None = None) -> np.ndarray:
        """Window scores [B] float64 (high = anomalous) for windows [B, n_mels, W]."""
        ...

    def to(self, device: torch.device) -> Any:
        """Move to ``device``; returns the scorer."""
        ...


@dataclass
class WindowScorer:
    method: str  # an encoder method (training.methods) or "ae"
    score_kind: str
    encoder: Encoder | None = None
    head: ArcMarginHead | None = None
    ae: FrameAE | None = None
    id_classes: dict[str, list[int]] = field(default_factory=dict)
    bank: dict[str, torch.Tensor] = field(default_factory=dict)
    knn_k: int = 5
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 512
    stats: StatsModel | None = None

    def __post_init__(self) -> None:
        if self.score_kind not in SCORE_KINDS:
            raise ValueError(f"score_kind {self.score_kind!r} not in {SCORE_KINDS}")
        self._union: torch.Tensor | None = None
        for m in (self.encoder, self.head, self.ae):
            if m is not None:
                m.eval()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        method: str,
        score_kind: str,
        model_config: dict,
        state: dict[str, dict],
        id_classes: dict[str, list[int]],
        bank: dict[str, np.ndarray],
        knn_k: int,
    ) -> WindowScorer:
        """Rebuild from an artifact's config, state dicts and bank (see registry)."""
        enc = head = ae = None
        if "encoder" in state:  # an encoder + optional ID classifier; else a frame autoencoder
            enc = Encoder(EncoderConfig.from_dict(model_config["encoder"]))
            enc.load_state_dict(state["encoder"])
            if "head" in state:
                h = model_config["head"]
                head = ArcMarginHead(enc.cfg.embedding_dim, int(h["n_classes"]), float(h["scale"]), float(h["margin"]))
                head.load_state_dict(state["head"])
        else:
            ae = FrameAE(AEConfig.from_dict(model_config["ae"]))
            ae.load_state_dict(state["ae"])
        tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in bank.items()}
        return cls(method, score_kind, enc, head, ae, dict(id_classes), tensors, knn_k)

    def to(self, device: torch.device) -> WindowScorer:
        self.device = device
        for m in (self.encoder, self.head, self.ae):
            if m is not None:
                m.to(device)
        self.bank = {k: v.to(device) for k, v in self.bank.items()}
        self._union = None
        return self

    # -- scoring -----------------------------------------------------------------------------
    @torch.inference_mode()
    def embed(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings [B, D] (fp32) of windows [B, n_mels, W]."""
        assert self.encoder is not None, "embed() needs a clp encoder"
        x = torch.as_tensor(windows, dtype=torch.float32)
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            with autocast(self.device):
                out.append(self.encoder(x[i : i + self.batch_size].to(self.device)).float())
        return torch.cat(out) if out else torch.zeros(0, self.encoder.cfg.embedding_dim, device=self.device)

    def score(self, windows: np.ndarray, machine_ids: Sequence[str], kind: str | None = None) -> np.ndarray:
        """Window scores [B] float64 (high = anomalous) for windows [B, n_mels, W]."""
        kind = kind or self.score_kind
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 3:
            raise ValueError(f"windows must be [B, n_mels, W], got shape {windows.shape}")
        if len(machine_ids) != windows.shape[0]:
            raise ValueError(f"{windows.shape[0]} windows but {len(machine_ids)} machine ids")
        if windows.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        if kind == "stats":
            if self.stats is None:
                raise ValueError("the stats score needs a statistic model (a stats-* method)")
            return self.stats.score(windows, list(machine_ids))
        if kind == "recon":
            return self._recon(windows)
        emb = self.embed(windows)
        if kind == "neglogp":
            return self._neglogp(emb, machine_ids)
        if kind == "knn":
            return self._knn(emb, machine_ids)
        raise ValueError(f"unknown score kind {kind!r}; valid: {SCORE_KINDS}")

    @torch.inference_mode()
    def _recon(self, windows: np.ndarray) -> np.ndarray:
        assert self.ae is not None, "recon score needs the ae method"
        x = torch.from_numpy(windows)
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            with autocast(self.device):
                out.append(self.ae.window_errors(x[i : i + self.batch_size].to(self.device)).float().cpu())
        return torch.cat(out).double().numpy()

    @torch.inference_mode()
    def _neglogp(self, emb: torch.Tensor, machine_ids: Sequence[str]) -> np.ndarray:
        if self.head is None:
            raise ValueError("this model has no classifier (density-only type); use the knn score")
        logp = torch.log_softmax(self.head(emb).float(), dim=1).double()
        out = torch.empty(emb.shape[0], dtype=torch.float64, device=emb.device)
        for mid in set(machine_ids):
            rows = torch.tensor([i for i, m in enumerate(machine_ids) if m == mid], device=emb.device)
            classes = self.id_classes.get(mid)
            if classes:
                out[rows] = -torch.logsumexp(logp[rows][:, classes], dim=1)
            else:  # unknown machine: distance to the closest known class
                out[rows] = -logp[rows].max(dim=1).values
        return out.cpu().numpy()

    @torch.inference_mode()
    def _knn(self, emb: torch.Tensor, machine_ids: Sequence[str]) -> np.ndarray:
        out = torch.empty(emb.shape[0], dtype=torch.float64, device=emb.device)
        for mid in set(machine_ids):
            rows = torch.tensor([i for i, m in enumerate(machine_ids) if m == mid], device=emb.device)
            bank = self.bank.get(mid)
            if bank is None:
                bank = self._union_bank()
            sim = emb[rows] @ bank.T.float()
            k = min(self.knn_k, bank.shape[0])
            out[rows] = (1.0 - sim.topk(k, dim=1).values).mean(dim=1).double()
        return out.cpu().numpy()

    def _union_bank(self) -> torch.Tensor:
        if self._union is None:
            if not self.bank:
                raise ValueError("knn score needs an embedding bank; the artifact has none")
            self._union = torch.cat(list(self.bank.values()))
        return self._union


def subsample_bank(emb: np.ndarray, limit: int = BANK_LIMIT, seed: int = 0) -> np.ndarray:
    """Deterministic random subset of at most ``limit`` rows."""
    if emb.shape[0] <= limit:
        return emb
    idx = np.sort(np.random.default_rng(seed).choice(emb.shape[0], size=limit, replace=False))
    return emb[idx]
