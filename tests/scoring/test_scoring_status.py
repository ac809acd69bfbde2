"""The staleness signal: ``machine_status`` points for every known machine, on the real broker, Redis, InfluxDB.

A machine that stops sending must be named as stale within ``stale_after_s + status_interval_s``,
come back when its windows resume, and still be reported by a restarted worker (the known
machines live in Redis).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from running_workers import running_worker
from scoring_helpers import influx_query, make_window, produce, wait_for

from deploy.private_services import plumbing_model
from scoring.status import KnownMachines, LastAudio, status_points
from soundwatch.influx import schema as ix
from soundwatch.settings import Settings, load_settings

STATUS_INTERVAL_S = 1.0
STALE_AFTER_S = 4.0
LOOP_SLACK_S = 1.5  # a status report can start this much after its interval (a batch in progress, a poll)
PIPELINE_LATENCY_S = 2.0  # produce -> scored, on a loaded 2-core machine


class Plant:
    """Produces one window every ``every_s`` for each machine in ``active`` (indices keep growing)."""

    def __init__(self, settings: Settings, machines: list[str], every_s: float = 0.25) -> None:
        self.settings, self.every_s = settings, every_s
        self.active = set(machines)
        self.index = dict.fromkeys(machines, 0)
        self.last_sent_ns: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            active = sorted(self.active)
            produce(self.settings, [make_window("fan", m, self.index[m]) for m in active])
            now = time.time_ns()
            for m in active:
                self.index[m] += 1
                self.last_sent_ns[m] = now
            self._stop.wait(self.every_s)

    def __enter__(self) -> Plant:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def _status(s: Settings, machine_id: str, after_ns: int = 0) -> list[dict]:
    q = (
        f'SELECT * FROM "{ix.MACHINE_STATUS_MEASUREMENT}" WHERE "{ix.MACHINE_ID}" = \'{machine_id}\' '
        f"AND time > {after_ns}"
    )
    return influx_query(s.influx.url, s.influx.database, q)


def _with_status(settings: Settings) -> Settings:
    data = {
        k: getattr(settings, k).model_dump()
        for k in ("kafka", "redis", "influx", "grafana", "ingest", "stream", "services", "features")
    }
    scoring = {**settings.scoring.model_dump(), "status_interval_s": STATUS_INTERVAL_S, "stale_after_s": STALE_AFTER_S}
    return load_settings(**data, scoring=scoring, registry_root=settings.registry_root)


@pytest.mark.integration
def test_silent_machine_turns_stale_recovers_and_survives_a_worker_restart(scoring_settings):
    s = _with_status(scoring_settings)
    # id_02's threshold is below any score: it alerts, and stays "alerting" underneath its staleness
    plumbing_model(s.registry_root, "fan", ["id_00", "id_01", "id_02"], thresholds={"id_02": -1e9})
    with Plant(s, ["id_00", "id_01", "id_02"]) as plant, running_worker(s) as worker:
        wait_for(lambda: [r for r in _status(s, "id_02") if r[ix.ALERTING] == 1], 60, "id_02 reported alerting")
        normal = _status(s, "id_01")[-1]
        assert (normal[ix.STATE], normal[ix.STALE], normal[ix.ALERTING]) == ("normal", 0, 0)
        assert normal[ix.SECONDS_SINCE_AUDIO] < STALE_AFTER_S and normal[ix.MACHINE_TYPE] == "fan"

        # id_01 and id_02 stop sending
        plant.active -= {"id_01", "id_02"}
        time.sleep(2 * plant.every_s)  # the producer's current round is out
        stopped_ns = time.time_ns()
        first_stale = wait_for(
            lambda: [r for r in _status(s, "id_01", stopped_ns) if r[ix.STALE] == 1],
            3 * (STALE_AFTER_S + STATUS_INTERVAL_S) + 30,
            "id_01 named as stale",
        )[0]
        assert first_stale[ix.STATE] == "stale" and first_stale[ix.ALERTING] == 0
        # named within stale_after_s + status_interval_s of its last audio (measured by the worker's own clock)
        assert STALE_AFTER_S < first_stale[ix.SECONDS_SINCE_AUDIO] <= STALE_AFTER_S + STATUS_INTERVAL_S + LOOP_SLACK_S
        # and on the wall clock: from the producer's last send (the pipeline's own latency on top)
        assert (
            first_stale["time"] - plant.last_sent_ns["id_01"]
            <= (STALE_AFTER_S + STATUS_INTERVAL_S + LOOP_SLACK_S + PIPELINE_LATENCY_S) * 1e9
        )
        stale_alerting = wait_for(
            lambda: [r for r in _status(s, "id_02", stopped_ns) if r[ix.STALE] == 1], 30, "id_02 named as stale"
        )[0]
        assert (stale_alerting[ix.STATE], stale_alerting[ix.ALERTING]) == ("stale", 1)  # stale wins, alert kept
        # the machine still sending is never stale meanwhile
        assert {r[ix.STALE] for r in _status(s, "id_00", stopped_ns)} == {0}
        assert worker.metrics.stale_machines._value.get() == 2

        # id_01 resumes: back to normal
        resumed_ns = time.time_ns()
        plant.active.add("id_01")
        back = wait_for(
            lambda: [r for r in _status(s, "id_01", resumed_ns) if r[ix.STALE] == 0], 30, "id_01 back to normal"
        )[0]
        assert back[ix.STATE] == "normal" and back[ix.SECONDS_SINCE_AUDIO] < STALE_AFTER_S

    # a new worker of the group (nothing in memory, nobody sends for id_02) still reports id_02, from Redis
    restarted_ns = time.time_ns()
    with running_worker(s):
        rows = wait_for(lambda: _status(s, "id_02", restarted_ns), 30, "id_02 reported by the restarted worker")
    after = rows[0]
    assert (after[ix.STATE], after[ix.STALE], after[ix.ALERTING]) == ("stale", 1, 1)
    # the silence is counted from id_02's last audio, not from the restart
    assert after[ix.SECONDS_SINCE_AUDIO] * 1e9 >= after["time"] - stopped_ns


@pytest.mark.integration
def test_each_known_machine_is_reported_by_the_one_worker_owning_its_partition(scoring_settings):
    s = _with_status(scoring_settings)
    machines = [f"id_{i:02d}" for i in range(8)]
    plumbing_model(s.registry_root, "fan", machines)
    produce(s, [make_window("fan", m, 0) for m in machines])
    with running_worker(s) as first:
        wait_for(lambda: len(first.known) == len(machines), 60, "all machines known to the first worker")
        with running_worker(s) as second:

            def owned(w) -> set[str]:
                parts = {tp.partition for tp in w._consumer.assignment()}
                return set(w.known.on_partitions(parts)) if parts else set()

            # after the rebalance each worker's status report (every second) refreshes from Redis
            wait_for(
                lambda: owned(first) and owned(second) and len(owned(first) | owned(second)) == len(machines),
                60,
                "the two workers to split the known machines",
            )
            a, b = owned(first), owned(second)
            assert a.isdisjoint(b) and a | b == {f"fan/{m}" for m in machines}


@pytest.mark.integration
def test_known_machines_keep_the_newest_window_and_merge_through_redis(isolated_settings):
    import redis

    s = isolated_settings
    client = redis.Redis.from_url(s.redis.url, **s.redis.client_kwargs())
    a = KnownMachines(client, s.redis.key_prefix, "group")
    a.observe("fan/id_00", partition=1, end_ns=100, received_ns=1_000)
    a.observe("fan/id_00", partition=1, end_ns=90, received_ns=5_000)  # a replayed window: not newer
    assert a.get("fan/id_00") == LastAudio(1, 100, 1_000)
    a.observe("pump/id_00", partition=2, end_ns=50, received_ns=2_000)
    assert a.save_dirty()
    b = KnownMachines(client, s.redis.key_prefix, "group")  # another worker, or this one after a restart
    b.observe("fan/id_00", partition=1, end_ns=200, received_ns=3_000)
    assert b.refresh()
    assert b.get("fan/id_00") == LastAudio(1, 200, 3_000)  # its own newer window wins
    assert b.get("pump/id_00") == LastAudio(2, 50, 2_000)
    assert set(b.on_partitions({2, 3})) == {"pump/id_00"}
    points = status_points(
        b.on_partitions({1, 2}), now_ns=63_000_000_000, stale_after_s=60.0, alerting=lambda m: m == "pump/id_00"
    )
    lines = [p.to_line() for p in points]
    assert lines == [
        "machine_status,machine_id=id_00,machine_type=fan alerting=0i,seconds_since_audio=62.999997,"
        'stale=1i,state="stale" 63000000000',
        "machine_status,machine_id=id_00,machine_type=pump alerting=1i,seconds_since_audio=62.999998,"
        'stale=1i,state="stale" 63000000000',
    ]
    client.delete(a.key)
    client.close()


@pytest.mark.integration
def test_machines_silent_for_forget_after_s_are_dropped_by_every_worker_and_come_back_if_heard(isolated_settings):
    import redis

    s = isolated_settings
    client = redis.Redis.from_url(s.redis.url, **s.redis.client_kwargs())
    day_ns = 86_400 * 10**9
    a = KnownMachines(client, s.redis.key_prefix, "group")
    a.observe("fan/id_00", partition=0, end_ns=100, received_ns=1 * day_ns)  # decommissioned on day 1
    a.observe("fan/id_01", partition=1, end_ns=100, received_ns=8 * day_ns)
    assert a.save_dirty()
    client.hset(a.state_key, mapping={"fan/id_00": "{}", "fan/id_01": "{}"})  # their filter/alert state
    b = KnownMachines(client, s.redis.key_prefix, "group")  # a second worker of the group
    assert b.refresh() and set(b.machines()) == {"fan/id_00", "fan/id_01"}

    assert a.prune(now_ns=9 * day_ns, forget_after_s=7 * 86_400.0) == ["fan/id_00"]
    assert set(a.machines()) == {"fan/id_01"}
    assert set(client.hkeys(a.key)) == {b"fan/id_01"} and set(client.hkeys(a.state_key)) == {b"fan/id_01"}
    assert b.refresh() and set(b.machines()) == {"fan/id_01"}  # the other worker drops its copy too

    b.observe("fan/id_00", partition=0, end_ns=200, received_ns=9 * day_ns + 1)  # it sends audio again
    assert b.save_dirty() and a.refresh()
    assert set(a.machines()) == {"fan/id_00", "fan/id_01"}  # a tombstone does not hide newer audio
    a.prune(now_ns=17 * day_ns, forget_after_s=7 * 86_400.0)  # both silent now; the old tombstone expires
    assert client.hkeys(a.key) == []
    client.delete(a.key, a.state_key, a.forgotten_key)
    client.close()


@pytest.mark.integration
def test_soundwatch_machines_forget_drops_a_machine_from_the_status_reports(
    scoring_settings, run_soundwatch, monkeypatch
):
    s = _with_status(scoring_settings)
    for key, value in s.to_env().items():
        monkeypatch.setenv(key, value)
    plumbing_model(s.registry_root, "fan", ["id_00", "id_01"])
    with Plant(s, ["id_00", "id_01"]) as plant, running_worker(s):
        wait_for(lambda: _status(s, "id_01"), 60, "id_01 reported")
        plant.active -= {"id_01"}  # decommissioned: it goes silent, then stale
        wait_for(lambda: [r for r in _status(s, "id_01") if r[ix.STALE] == 1], 60, "id_01 stale")

        listed = run_soundwatch("machines", "list", "--json")
        assert listed.code == 0 and set(json.loads(listed.stdout)["seconds_since_audio"]) == {"fan/id_00", "fan/id_01"}
        forgot = run_soundwatch("machines", "forget", "fan", "id_01")
        assert forgot.code == 0, forgot.stderr
        forgot_ns = time.time_ns()
        time.sleep(3 * STATUS_INTERVAL_S + LOOP_SLACK_S)  # a few status rounds
        assert _status(s, "id_01", forgot_ns + int((STATUS_INTERVAL_S + LOOP_SLACK_S) * 1e9)) == []
        assert _status(s, "id_00", forgot_ns)  # the others are still reported

    unknown = run_soundwatch("machines", "forget", "fan", "id_99")
    assert unknown.code == 6 and "does not know machine fan/id_99" in unknown.stderr
