"""Which model scores which machine type: load on first use, hot-reload on a Redis message.

The worker depends only on the two small protocols below; the real
implementation is ``soundwatch.model.registry.ModelRegistry`` / ``LoadedModel``.
A reload swaps the cached model object between batches (the worker calls
:meth:`ModelCache.apply_reloads` only while no batch is in flight), so a batch
is always scored by one version and the next points carry the new
``model_version`` tag.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import numpy as np
import torch

from soundwatch.errors import ServiceUnavailable
from soundwatch.model.registry import parse_reload_message, reload_channel
from soundwatch.params import FeatureParams

log = logging.getLogger(__name__)


class ScoringModel(Protocol):
    """The part of ``soundwatch.model.registry.LoadedModel`` the worker uses (score: high = anomalous)."""

    machine_type: str
    version: str
    feature_params: FeatureParams
    median_k: int

    def score_windows(self, windows: np.ndarray, machine_ids: Sequence[str]) -> np.ndarray: ...

    def threshold_for(self, machine_id: str) -> float: ...


class ModelSource(Protocol):
    """The part of ``soundwatch.model.registry.ModelRegistry`` the worker uses."""

    def load(self, machine_type: str, version: str | None = None, device: str = "cpu") -> ScoringModel: ...

    def machine_types(self) -> list[str]: ...

    def current_version(self, machine_type: str) -> str | None: ...


class ModelCache:
    """Current model per machine type. ``get`` returns None for a type without a usable model.

    Misses are remembered for ``negative_ttl_s`` so a stream of windows of an unknown
    type does not hit the registry's disk for every window.
    """

    def __init__(
        self,
        source: ModelSource,
        device: str = "cpu",
        negative_ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        optimize: bool = True,
    ) -> None:
        self._source = source
        self.device = device
        self.optimize = optimize
        self._negative_ttl_s = negative_ttl_s
        self._clock = clock
        self._models: dict[str, ScoringModel] = {}
        self._misses: dict[str, tuple[float, str]] = {}

    @property
    def loaded(self) -> dict[str, str]:
        """machine_type -> loaded version."""
        return {t: m.version for t, m in self._models.items()}

    def get(self, machine_type: str) -> ScoringModel | None:
        model = self._models.get(machine_type)
        if model is not None:
            return model
        miss = self._misses.get(machine_type)
        if miss is not None and self._clock() < miss[0]:
            return None
        return self._load(machine_type, None)

    def why_missing(self, machine_type: str) -> str:
        miss = self._misses.get(machine_type)
        return miss[1] if miss else f"no model for machine type {machine_type!r}"

    def _load(self, machine_type: str, version: str | None) -> ScoringModel | None:
        try:
            known = self._source.machine_types()
            if machine_type not in known:
                raise LookupError(
                    f"no model for machine type {machine_type!r} in the registry "
                    f"(known: {sorted(known)}); train one with `soundwatch train`"
                )
            model = self._source.load(machine_type, version, device=self.device)
        except Exception as exc:  # a broken artifact must not stop the worker: the windows are dead-lettered
            reason = str(exc) if isinstance(exc, LookupError) else f"model for {machine_type!r} cannot be loaded: {exc}"
            log.warning("%s", reason)
            self._misses[machine_type] = (self._clock() + self._negative_ttl_s, reason)
            return None
        self._misses.pop(machine_type, None)
        if self.optimize and self.device == "cpu":
            freeze_encoder(model)
        old = self._models.get(machine_type)
        self._models[machine_type] = model
        log.info(
            "model %s/%s on %s%s", machine_type, model.version, self.device, f" (replaces {old.version})" if old else ""
        )
        return model

    def reload(self, machine_type: str, version: str | None) -> bool:
        """Load ``version`` (None = current) and swap it in; keep the old model if that fails."""
        current = self._models.get(machine_type)
        if current is not None and version is not None and current.version == version:
            return False
        if current is None and machine_type not in self._misses:
            return False  # never used here: load lazily when a window arrives
        self._misses.pop(machine_type, None)
        model = self._load(machine_type, version)
        if model is None and current is not None:
            self._models[machine_type] = current
            self._misses.pop(machine_type, None)
            log.error("hot reload of %s to %s failed; still scoring with %s", machine_type, version, current.version)
            return False
        return model is not None

    def check_current(self) -> list[tuple[str, str]]:
        """Ask the source for each loaded type's current version (catches missed reload messages)."""
        changed = []
        for machine_type, model in list(self._models.items()):
            try:
                current = self._source.current_version(machine_type)
            except ServiceUnavailable as exc:  # Redis down: retried next time, the loaded model keeps scoring
                log.debug("cannot read current version of %s: %s", machine_type, exc)
                continue
            except Exception as exc:  # e.g. a current-version value that is not a version name: say so, keep scoring
                log.warning(
                    "ignoring the current version of %s: %s; still scoring with %s", machine_type, exc, model.version
                )
                continue
            if current and current != model.version and self.reload(machine_type, current):
                changed.append((machine_type, current))
        return changed


def freeze_encoder(model: object, probe_batch: int = 8, tolerance: float = 1e-4) -> bool:
    """CPU inference speed-up: replace a clp model's eager encoder by a frozen TorchScript copy.

    ``torch.jit.freeze`` + ``optimize_for_inference`` fold BatchNorm into the convolutions and
    drop dropout, which roughly doubles CPU throughput of the small encoder (measured in the
    scoring bench) without changing what is computed. The copy is checked against the eager
    module on a probe batch; on any error or a difference above ``tolerance`` the eager module
    stays. Models without an encoder (``ae``) are left alone. Returns True when swapped.
    """
    scorer = getattr(model, "scorer", None)
    encoder = getattr(scorer, "encoder", None)
    if not isinstance(encoder, torch.nn.Module) or isinstance(encoder, torch.jit.ScriptModule):
        return False
    try:
        cfg: Any = encoder.cfg
        gen = torch.Generator().manual_seed(0)
        probe = torch.randn(probe_batch, cfg.n_mels, cfg.window_frames, generator=gen) * 10 - 50
        encoder.eval()
        with torch.inference_mode():
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(encoder, probe).eval()))
            diff = float((frozen(probe[:3]) - encoder(probe[:3])).abs().max())
        if not diff <= tolerance:
            log.warning("frozen encoder differs from eager by %.3g; keeping the eager encoder", diff)
            return False
    except Exception as exc:  # tracing is an optimisation; a model it cannot handle still scores eagerly
        log.info("encoder not frozen (%s: %s); scoring eagerly", type(exc).__name__, exc)
        return False
    frozen.cfg = cfg  # type: ignore[attr-defined]  # the scorer reads cfg.embedding_dim for empty input
    cast(Any, scorer).encoder = frozen
    return True


class ReloadListener:
    """Non-blocking reader of the registry's reload channel ``{prefix}:model:reload``.

    Reconnects with back-off when Redis goes away; messages missed meanwhile are
    caught by :meth:`ModelCache.check_current`, which the worker calls periodically.
    """

    def __init__(self, redis_client, prefix: str, retry_s: float = 5.0) -> None:
        self._client = redis_client
        self.channel = reload_channel(prefix)
        self._pubsub: Any = None
        self._retry_s = retry_s
        self._next_try = 0.0

    def _ensure(self) -> bool:
        if self._pubsub is not None:
            return True
        if time.monotonic() < self._next_try:
            return False
        try:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.channel)
            self._pubsub = pubsub
            return True
        except Exception as exc:
            log.warning("cannot subscribe to %s (%s); retrying in %.0fs", self.channel, exc, self._retry_s)
            self._next_try = time.monotonic() + self._retry_s
            return False

    def poll(self) -> list[tuple[str, str | None]]:
        if not self._ensure():
            return []
        out = []
        try:
            while True:
                msg = self._pubsub.get_message(timeout=0.0)
                if msg is None:
                    break
                if msg.get("type") != "message":
                    continue
                try:
                    out.append(parse_reload_message(msg["data"]))
                except ValueError as exc:
                    log.warning("ignoring malformed reload message: %s", exc)
        except Exception as exc:
            log.warning("lost the reload subscription (%s); resubscribing", exc)
            self.close()
        return out

    def close(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail again
                self._pubsub.close()
            self._pubsub = None
