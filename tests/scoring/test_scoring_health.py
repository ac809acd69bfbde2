"""/healthz and /readyz of a real scoring worker (the k8s probes' contract, soundwatch.liveness)."""

from __future__ import annotations

import threading

import pytest
import requests
from running_workers import running_worker
from scoring_helpers import count_points, make_window, produce, wait_for

from deploy.private_services import plumbing_model
from soundwatch.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class GatedRegistry:
    """The real model registry, whose ``load`` waits for ``gate``: scoring blocked while windows wait."""

    def __init__(self, settings: Settings) -> None:
        from soundwatch.model.registry import ModelRegistry

        self.registry = ModelRegistry(settings.registry_root, settings.redis)
        self.gate = threading.Event()

    def machine_types(self) -> list[str]:
        return self.registry.machine_types()

    def current_version(self, machine_type: str) -> str | None:
        return self.registry.current_version(machine_type)

    def load(self, machine_type: str, version: str | None = None, device: str = "cpu"):
        assert self.gate.wait(120), "the test never opened the gate"
        return self.registry.load(machine_type, version, device=device)


def _stalling(settings: Settings, stall_after_s: float) -> Settings:
    return load_settings(
        **{k: v for k, v in settings.model_dump().items() if k != "scoring"},
        scoring={**settings.scoring.model_dump(), "stall_after_s": stall_after_s},
    )


def _get(worker, path: str) -> tuple[int, dict]:
    response = requests.get(f"http://127.0.0.1:{worker.metrics.port}{path}", timeout=5)
    return response.status_code, response.json()


def test_healthz_turns_503_while_windows_wait_and_scoring_is_blocked_then_200_again(scoring_settings):
    s = _stalling(scoring_settings, 1.0)
    plumbing_model(s.registry_root, "fan", ["id_00"])
    source = GatedRegistry(s)
    with running_worker(s, source=source) as worker:
        assert _get(worker, "/healthz")[0] == 200
        code, body = wait_for(lambda: (r := _get(worker, "/readyz"))[0] == 200 and r, 20, "ready")
        assert body["status"] == "ok" and body["waiting"] is False

        # idle for longer than stall_after_s: no input waiting, so no stall
        wait_for(lambda: (body := _get(worker, "/healthz")[1])["seconds_since_progress"] > 1.5 and body, 10, "idle")
        assert _get(worker, "/healthz")[0] == 200

        produce(s, [make_window("fan", "id_00", i) for i in range(6)])
        code, body = wait_for(lambda: (r := _get(worker, "/healthz"))[0] == 503 and r, 30, "healthz 503 (stalled)")
        assert body["status"] == "stalled" and body["waiting"] is True
        assert _get(worker, "/readyz")[0] == 503
        assert "soundwatch_scoring_windows" in requests.get(f"http://127.0.0.1:{worker.metrics.port}/metrics").text

        source.gate.set()  # scoring unblocks: the worker makes progress again
        wait_for(lambda: count_points(s) >= 6, 60, "the waiting windows scored")
        wait_for(lambda: _get(worker, "/healthz")[0] == 200, 20, "healthz 200 again")
        assert _get(worker, "/readyz")[0] == 200


def test_readyz_is_503_until_a_model_exists(scoring_settings):
    s = scoring_settings
    with running_worker(s) as worker:
        code, body = _get(worker, "/readyz")
        assert (code, body["status"]) == (503, "starting")
        assert _get(worker, "/healthz")[0] == 200  # alive: nothing to restart for
        plumbing_model(s.registry_root, "fan", ["id_00"])
        wait_for(lambda: _get(worker, "/readyz")[0] == 200, 30, "ready once a model exists")
