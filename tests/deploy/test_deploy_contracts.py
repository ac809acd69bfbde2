"""The deploy files read as the plant's platform engineer reads them: what each service or pod needs
from another (credentials, ports, volumes, images, start order) is what the other provides.

Compose is read after interpolation with .env.example; Kubernetes after rendering each overlay."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from urllib.parse import urlparse

import compose_file
import pytest
import yaml
from deploy_files import DEPLOY, compose_model, containers, pod_specs, rendered

from soundwatch.settings import Settings

DOCKERFILE = (DEPLOY / "docker" / "Dockerfile").read_text()
UID = 10001
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
# Created out of band (deploy/k8s/base/kustomization.yaml says how).
OUT_OF_BAND_SECRETS = {"soundwatch-secrets", "kafka-ca", "soundwatch-kafka-keda"}


def _mounts(svc: dict) -> dict[str, str]:
    """target -> source of a compose service's volumes (short syntax)."""
    out = {}
    for spec in svc.get("volumes", []):
        source, target, *_ = spec.split(":")
        out[target] = source
    return out


def _host_path(arg: str, svc: dict, out_target: str, out_dir) -> str:
    """A command argument with the exporter's output volume and its bind-mounted files mapped to this host."""
    if arg == out_target:
        return str(out_dir)
    source = _mounts(svc).get(arg)
    if source is not None and source.startswith("./"):
        return str(DEPLOY / "compose" / source)
    return arg


def _expand_grafana(text: str, env: dict[str, str]) -> str:
    """Grafana's provisioning expansion of $VAR / ${VAR} from its environment."""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m[1] or m[2], ""), text)


# ---------------------------------------------------------------------------- compose
def test_compose_grafana_can_query_influxdb(tmp_path):
    """Item 5: run the stack's own export (grafana-provisioning's command, its environment) and check
    that the data source it writes reaches the compose InfluxDB 2 with the token InfluxDB was set up
    with, through variables Grafana's container has."""
    model = compose_model()
    services = model["services"]
    exporter, grafana, influx = services["grafana-provisioning"], services["grafana"], services["influxdb"]

    out_target = exporter["command"][exporter["command"].index("--out") + 1]
    volume = _mounts(exporter)[out_target]
    assert volume in model["volumes"], "the provisioning must be a named volume Grafana can mount"
    assert _mounts(grafana)[GRAFANA_PROVISIONING] == volume, "Grafana must mount what the exporter writes"
    assert grafana["depends_on"]["grafana-provisioning"] == {"condition": "service_completed_successfully"}

    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUNDWATCH_")}
    env.update(compose_file.environment(exporter))
    env["PYTHONPATH"] = str(DEPLOY.parent)
    command = [_host_path(a, exporter, out_target, tmp_path) for a in exporter["command"]]
    result = subprocess.run(
        [sys.executable, "-m", "deploy.main", *command, "--machines", "fan/id_00"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr

    source_text = (tmp_path / "datasources" / "soundwatch.yaml").read_text()
    (source,) = yaml.safe_load(source_text)["datasources"]
    grafana_env = compose_file.environment(grafana)
    referenced = set(re.findall(r"\$\{?(\w+)", source_text))
    assert referenced, "the exported data source must take its secret from Grafana's environment"
    assert referenced <= set(grafana_env), f"Grafana's container lacks {sorted(referenced - set(grafana_env))}"

    url = urlparse(source["url"])
    influx_env = compose_file.environment(influx)
    assert (url.hostname, url.port) == ("influxdb", 8086)
    assert source["jsonData"]["version"] == "InfluxQL"
    assert source["jsonData"]["dbName"] == influx_env["DOCKER_INFLUXDB_INIT_BUCKET"]  # virtual DBRP mapping
    header = (
        source["jsonData"]["httpHeaderName1"],
        _expand_grafana(source["secureJsonData"]["httpHeaderValue1"], grafana_env),
    )
    assert header == ("Authorization", f"Token {influx_env['DOCKER_INFLUXDB_INIT_ADMIN_TOKEN']}")
    assert influx_env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"] not in source_text  # no secret in the files

    provider = yaml.safe_load((tmp_path / "dashboards" / "soundwatch.yaml").read_text())["providers"][0]
    assert provider["options"]["path"].startswith(GRAFANA_PROVISIONING + "/")

    # the stack's Grafana is fresh: soundwatch's alerts get one route of their own, merged into
    # Grafana's default tree (without a policies.yaml they would go to the default e-mail receiver)
    (tree,) = yaml.safe_load((tmp_path / "alerting" / "policies.yaml").read_text())["policies"]
    assert tree["receiver"] == "grafana-default-email"
    (route,) = tree["routes"]
    assert route["receiver"] == "soundwatch-maintenance"
    assert ["app", "=", "soundwatch"] in route["object_matchers"]
    contact_text = (tmp_path / "alerting" / "contact-points.yaml").read_text()
    referenced = set(re.findall(r"\$\{?(\w+)", contact_text))
    assert referenced and referenced <= set(grafana_env), "the webhook must come from Grafana's environment"


def test_compose_workers_write_to_the_influxdb_compose_sets_up():
    influx = compose_file.environment(compose_model()["services"]["influxdb"])
    for name, svc in compose_model()["services"].items():
        if svc.get("image", "").startswith("soundwatch"):
            env = compose_file.environment(svc)
            assert env["SOUNDWATCH_INFLUX__API"] == "v2", name
            assert env["SOUNDWATCH_INFLUX__TOKEN"] == influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"], name
            assert env["SOUNDWATCH_INFLUX__ORG"] == influx["DOCKER_INFLUXDB_INIT_ORG"], name
            assert env["SOUNDWATCH_INFLUX__BUCKET"] == influx["DOCKER_INFLUXDB_INIT_BUCKET"], name


def _image_owned_dirs() -> set[str]:
    m = re.search(rf"chown {UID}:{UID} ([^\n&\\]+)", DOCKERFILE)
    assert m, "the Dockerfile must chown the volume mount points to the image user"
    return set(m[1].split())


def test_image_runs_as_the_numeric_user_that_owns_its_volume_mount_points():
    assert re.search(rf"^USER {UID}:{UID}$", DOCKERFILE, re.M)
    assert f"useradd --uid {UID} --gid {UID}" in DOCKERFILE
    owned = _image_owned_dirs()
    assert {"/data", "/models", "/archive", "/grafana-provisioning"} <= owned
    for line in re.findall(r"mkdir -p ([^\n&\\]+)", DOCKERFILE):
        assert set(line.split()) == owned  # every directory created is chowned


def test_compose_named_volumes_are_writable_by_the_service_user():
    """Item 6: a fresh named volume takes the owner of the image directory it is mounted on."""
    model = compose_model()
    owned = _image_owned_dirs()
    checked = 0
    for name, svc in model["services"].items():
        if not svc.get("image", "").startswith("soundwatch"):
            continue
        for spec in svc.get("volumes", []):
            source, target, *mode = spec.split(":")
            if source in model["volumes"] and mode != ["ro"]:
                assert target in owned, f"compose {name}: {target} is root-owned in a fresh volume"
                checked += 1
    assert checked >= 6


def test_compose_starts_scoring_and_grafana_after_the_first_models():
    """Item 7: model-bootstrap runs once before the scoring workers and the Grafana export."""
    services = compose_model()["services"]
    bootstrap = services["model-bootstrap"]
    assert bootstrap["entrypoint"] == ["soundwatch-bootstrap-models"] and bootstrap["command"][0] == "train"
    data = bootstrap["command"][1]
    retrain = services["retrain"]
    assert _mounts(bootstrap)[data] == _mounts(retrain)[retrain["command"][retrain["command"].index("--data") + 1]]
    assert _mounts(bootstrap)["/models"] == _mounts(services["scoring"])["/models"] == "models"
    done = {"condition": "service_completed_successfully"}
    for name in ("scoring", "scoring-gpu", "grafana-provisioning"):
        assert services[name]["depends_on"]["model-bootstrap"] == done, name
    for name in ("model-bootstrap", "grafana-provisioning"):
        assert services[name]["restart"] == "no", f"{name} is one-shot: restarting it would loop"


def test_compose_gpu_service_builds_the_cuda_image():
    """Item 7: scoring-gpu builds its own image with the CUDA torch, the others the CPU one."""
    services = compose_model()["services"]
    builds = {s["image"]: s["build"] for s in services.values() if "build" in s}
    assert builds["soundwatch:cuda"]["args"] == {"TORCH_VARIANT": "cuda"}
    assert builds["soundwatch:cpu"]["args"] == {"TORCH_VARIANT": "cpu"}
    assert services["scoring-gpu"]["image"] == "soundwatch:cuda"
    for name, svc in services.items():  # one image tag, one build
        if "build" in svc:
            assert svc["build"] == builds[svc["image"]], name
    torch_stage = r"^FROM base AS torch-(\w+)\n(?:#[^\n]*\n)*RUN pip install [^\n]*--index-url (\S+)"
    stages = dict(re.findall(torch_stage, DOCKERFILE, re.M))
    assert re.search(r"/whl/cu\d+$", stages["cuda"]) and stages["cpu"].endswith("/whl/cpu")
    assert re.search(r"^FROM torch-\$\{TORCH_VARIANT\} AS app$", DOCKERFILE, re.M)


def test_compose_archive_index_stays_on_one_host():
    """The SQLite (WAL) archive index is shared by archive and retrain only through a local named
    volume of this one host."""
    model = compose_model()
    users = {n for n, s in model["services"].items() if "archive" in _mounts(s).values()}
    assert users == {"archive", "retrain"}
    assert model["volumes"]["archive"] in (None, {}), "no volume driver/driver_opts (NFS) for the archive"


# ---------------------------------------------------------------------------- kubernetes
@pytest.fixture(scope="module")
def overlays() -> dict[str, list[dict]]:
    return rendered()


def _find(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def _pod(objects: list[dict], kind: str, name: str) -> dict:
    return pod_specs([_find(objects, kind, name)])[0][1]


def _claims(pod: dict) -> dict[str, str]:
    """volume name -> PVC claim name."""
    return {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}


def test_pods_run_as_the_image_user_with_least_privilege(overlays):
    """Item 6: non-root uid 10001, fsGroup for writable volumes, read-only root, no capabilities."""
    for overlay, objects in overlays.items():
        pods = pod_specs(objects)
        assert len(pods) == 4
        for obj, pod in pods:
            where = f"{overlay} {obj['metadata']['name']}"
            assert pod["securityContext"] == {
                "runAsNonRoot": True,
                "runAsUser": UID,
                "runAsGroup": UID,
                "fsGroup": UID,
                "fsGroupChangePolicy": "OnRootMismatch",
                "seccompProfile": {"type": "RuntimeDefault"},
            }, where
            empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
            for c in containers(pod):
                assert c["securityContext"] == {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                }, f"{where}/{c['name']}"
                tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
                assert tmp and tmp[0]["name"] in empty_dirs, f"{where}/{c['name']}: read-only root needs /tmp"
    for cache in ("HOME", "XDG_CACHE_HOME", "NUMBA_CACHE_DIR", "MPLCONFIGDIR"):
        assert re.search(rf"\b{cache}=/tmp\b", DOCKERFILE), f"{cache} must point under /tmp"


def test_every_mount_claim_and_reference_resolves(overlays):
    for overlay, objects in overlays.items():
        claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
        configmaps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
        for obj, pod in pod_specs(objects):
            where = f"{overlay} {obj['metadata']['name']}"
            volumes = {v["name"] for v in pod["volumes"]}
            assert set(_claims(pod).values()) <= claims, where
            secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
            for c in containers(pod):
                assert {m["name"] for m in c["volumeMounts"]} <= volumes, f"{where}/{c['name']}"
                refs = c.get("envFrom", [])
                assert {r["configMapRef"]["name"] for r in refs if "configMapRef" in r} <= configmaps
                secrets |= {r["secretRef"]["name"] for r in refs if "secretRef" in r}
            assert secrets <= OUT_OF_BAND_SECRETS, where
        namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
        assert namespaces == {_find(objects, "Namespace", "soundwatch")["metadata"]["name"]}


def _probe_port(container: dict, probe: str) -> tuple[str, int]:
    get = container[probe]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    return get["path"], ports[get["port"]]


@pytest.mark.parametrize(
    ("deployment", "port"),
    [
        ("soundwatch-scoring", Settings().scoring.metrics_port),
        ("soundwatch-features", Settings().stream.workers_web_port),
    ],
)
def test_workers_have_health_probes_on_their_settings_port(overlays, deployment, port):
    """Item 6: liveness /healthz, readiness /readyz, on the worker's existing web/metrics port."""
    for objects in overlays.values():
        (worker,) = _pod(objects, "Deployment", deployment)["containers"]
        assert _probe_port(worker, "livenessProbe") == ("/healthz", port)
        assert _probe_port(worker, "startupProbe") == ("/healthz", port)
        assert _probe_port(worker, "readinessProbe") == ("/readyz", port)
        assert worker["livenessProbe"]["periodSeconds"] * worker["livenessProbe"]["failureThreshold"] <= 120
    config = _find(objects, "ConfigMap", "soundwatch-config")["data"]
    assert config["SOUNDWATCH_SCORING__METRICS_HOST"] == "0.0.0.0"  # the kubelet probes the pod IP
    scoring = _find(objects, "Deployment", "soundwatch-scoring")["spec"]["template"]["metadata"]
    assert scoring["annotations"]["prometheus.io/port"] == str(Settings().scoring.metrics_port)


def test_archive_index_has_one_writer_on_local_storage(overlays):
    """Item 6: SQLite WAL needs one kernel: the archive volume is ReadWriteOnce, mounted by one pod
    only (one replica, never two during a rollout), and retraining runs inside that pod."""
    for objects in overlays.values():
        archive_pvc = _find(objects, "PersistentVolumeClaim", "soundwatch-archive")
        assert archive_pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
        users = [(o, p) for o, p in pod_specs(objects) if "soundwatch-archive" in _claims(p).values()]
        assert [o["metadata"]["name"] for o, _ in users] == ["soundwatch-archive"]
        deployment, pod = users[0]
        assert deployment["kind"] == "Deployment" and deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        by_name = {c["name"]: c for c in pod["containers"]}
        assert by_name["archive"]["args"][:2] == ["archive", "run"] and "--schedule" in by_name["retrain"]["args"]
        volume = next(v for v, claim in _claims(pod).items() if claim == "soundwatch-archive")
        for c in by_name.values():
            mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == volume)
            assert c["args"][c["args"].index("--archive-root") + 1] == mount
        assert not [o for o in objects if o["kind"] == "CronJob"]


def test_first_models_are_trained_before_scoring_starts(overlays):
    """Item 7: a Job trains each type without a model from the training-data volume into the models
    volume; scoring pods wait for them in an init container reading the same volumes."""
    for objects in overlays.values():
        job = _pod(objects, "Job", "soundwatch-model-bootstrap")
        (bootstrap,) = job["containers"]
        assert bootstrap["command"] == ["soundwatch-bootstrap-models"] and bootstrap["args"][0] == "train"
        mounts = {m["mountPath"]: m for m in bootstrap["volumeMounts"]}
        claims = _claims(job)
        assert claims[mounts[bootstrap["args"][1]]["name"]] == "soundwatch-training-data"
        registry = _find(objects, "ConfigMap", "soundwatch-config")["data"]["SOUNDWATCH_REGISTRY_ROOT"]
        assert claims[mounts[registry]["name"]] == "soundwatch-models" and not mounts[registry].get("readOnly")

        scoring = _pod(objects, "Deployment", "soundwatch-scoring")
        (wait,) = scoring["initContainers"]
        assert wait["command"] == bootstrap["command"] and wait["args"][:2] == ["wait", bootstrap["args"][1]]
        wait_mounts = {m["mountPath"]: m["name"] for m in wait["volumeMounts"]}
        assert _claims(scoring)[wait_mounts[bootstrap["args"][1]]] == "soundwatch-training-data"
        assert _claims(scoring)[wait_mounts[registry]] == "soundwatch-models"


def test_images_per_overlay(overlays):
    """Item 7: the gpu overlay runs scoring (and its init container) on the CUDA image, the rest on
    the CPU image; the cpu overlay is all CPU; every image is the registry's."""
    for overlay, objects in overlays.items():
        for obj, pod in pod_specs(objects):
            for c in containers(pod):
                gpu_scoring = overlay == "gpu" and obj["metadata"]["name"] == "soundwatch-scoring"
                tag = "cuda" if gpu_scoring else "cpu"
                assert c["image"] == f"registry.example.internal/soundwatch:{tag}", (overlay, c["name"])
    (gpu,) = _pod(overlays["gpu"], "Deployment", "soundwatch-scoring")["containers"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "SOUNDWATCH_SCORING__DEVICE", "value": "cuda"} in gpu["env"]


def test_keda_scaler_matches_the_scoring_consumer(overlays, stack):
    """Item 8: KEDA measures the lag of the consumer the workers are, from where they would start."""
    from soundwatch.kafka import make_consumer

    settings = Settings()
    consumer = make_consumer(stack, group_id=None)
    try:
        reset = consumer.config["auto_offset_reset"]
    finally:
        consumer.close()
    for objects in overlays.values():
        scaled = _find(objects, "ScaledObject", "soundwatch-scoring")
        config = _find(objects, "ConfigMap", "soundwatch-config")["data"]
        (trigger,) = scaled["spec"]["triggers"]
        meta = trigger["metadata"]
        assert meta["offsetResetPolicy"] == reset == "earliest"
        assert meta["consumerGroup"] == settings.scoring.group_id
        assert meta["topic"] == settings.kafka.topics.features
        assert meta["bootstrapServers"] == config["SOUNDWATCH_KAFKA__BOOTSTRAP_SERVERS"]
        assert scaled["spec"]["scaleTargetRef"]["name"] == "soundwatch-scoring"
        assert scaled["spec"]["maxReplicaCount"] <= int(config["SOUNDWATCH_KAFKA__TOPICS__PARTITIONS"])
