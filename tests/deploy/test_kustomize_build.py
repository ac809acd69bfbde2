"""The test renderer (kustomize_build) does what `kustomize build` does for the features deploy/k8s
uses, and refuses the rest. Expected outputs are kustomize's documented behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kustomize_build import BuildError, UnsupportedFeature, build, split_image

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web"},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "tolerations": [{"key": "a", "operator": "Exists"}],
                "initContainers": [{"name": "init", "image": "app"}],
                "containers": [
                    {
                        "name": "main",
                        "image": "app",
                        "args": ["serve", "--fast"],
                        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                        "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}},
                    },
                    {"name": "sidecar", "image": "proxy:1.2", "args": ["run"]},
                ],
            },
        },
    },
}


def _write(root: Path, files: dict[str, object]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        docs = content if isinstance(content, list) else [content]
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def _by_kind(objects: list[dict], kind: str) -> dict:
    return next(o for o in objects if o["kind"] == kind)


def test_namespace_goes_on_namespaced_objects_only(tmp_path):
    _write(
        tmp_path,
        {
            "kustomization.yaml": {"namespace": "plant", "resources": ["ns.yaml", "app.yaml"]},
            "ns.yaml": {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plant"}},
            "app.yaml": [
                DEPLOYMENT,
                {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv"}},
                {
                    "apiVersion": "keda.sh/v1alpha1",
                    "kind": "ScaledObject",
                    "metadata": {"name": "s", "namespace": "other"},
                },
            ],
        },
    )
    objects = build(tmp_path)
    namespaces = {o["kind"]: o["metadata"].get("namespace") for o in objects}
    assert namespaces == {"Namespace": None, "Deployment": "plant", "PersistentVolume": None, "ScaledObject": "plant"}


def test_images_match_the_exact_name_and_keep_or_replace_the_tag(tmp_path):
    _write(
        tmp_path,
        {
            "kustomization.yaml": {
                "resources": ["app.yaml"],
                "images": [
                    {"name": "app", "newName": "reg.example/app", "newTag": "cpu"},
                    {"name": "proxy", "newName": "reg.example/proxy"},
                ],
            },
            "app.yaml": DEPLOYMENT,
        },
    )
    pod = build(tmp_path)[0]["spec"]["template"]["spec"]
    assert [c["image"] for c in pod["initContainers"] + pod["containers"]] == [
        "reg.example/app:cpu",
        "reg.example/app:cpu",
        "reg.example/proxy:1.2",
    ]


def test_an_overlay_image_entry_does_not_match_a_name_the_base_already_rewrote(tmp_path):
    """Why deploy/k8s names its images only in the overlays: kustomize matches the current name."""
    _write(
        tmp_path,
        {
            "base/kustomization.yaml": {
                "resources": ["app.yaml"],
                "images": [{"name": "app", "newName": "reg.example/app", "newTag": "cpu"}],
            },
            "base/app.yaml": DEPLOYMENT,
            "overlay/kustomization.yaml": {"resources": ["../base"], "images": [{"name": "app", "newTag": "cuda"}]},
        },
    )
    pod = build(tmp_path / "overlay")[0]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "reg.example/app:cpu"


def test_strategic_merge_patch_uses_the_api_merge_keys(tmp_path):
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "template": {
                "spec": {
                    "tolerations": [{"key": "gpu", "operator": "Exists"}],
                    "containers": [
                        {
                            "name": "main",
                            "image": "app-cuda",
                            "env": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}],
                            "args": ["serve"],
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
                        }
                    ],
                    "initContainers": [{"name": "init", "image": None}],
                }
            }
        },
    }
    _write(
        tmp_path,
        {
            "kustomization.yaml": {"resources": ["app.yaml"], "patches": [{"path": "patch.yaml"}]},
            "app.yaml": DEPLOYMENT,
            "patch.yaml": patch,
        },
    )
    pod = build(tmp_path)[0]["spec"]["template"]["spec"]
    main, sidecar = pod["containers"]
    assert (main["name"], sidecar) == ("main", DEPLOYMENT["spec"]["template"]["spec"]["containers"][1])
    assert main["image"] == "app-cuda"
    assert main["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "two"}, {"name": "C", "value": "3"}]
    assert main["args"] == ["serve"]  # a list without a merge strategy is replaced
    assert main["resources"] == {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi", "nvidia.com/gpu": 1}}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]  # atomic list: replaced
    assert pod["initContainers"] == [{"name": "init"}]  # null deletes a key


def test_lists_of_custom_resources_are_replaced(tmp_path):
    scaled = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "s"},
        "spec": {"triggers": [{"type": "kafka", "metadata": {"topic": "a"}}], "maxReplicaCount": 4},
    }
    patch = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "s"},
        "spec": {"triggers": [{"type": "cpu", "metadata": {"value": "50"}}]},
    }
    _write(
        tmp_path,
        {
            "kustomization.yaml": {"resources": ["s.yaml"], "patches": [{"path": "p.yaml"}]},
            "s.yaml": scaled,
            "p.yaml": patch,
        },
    )
    spec = build(tmp_path)[0]["spec"]
    assert spec == {"triggers": [{"type": "cpu", "metadata": {"value": "50"}}], "maxReplicaCount": 4}


@pytest.mark.parametrize(
    "kustomization",
    [
        {"resources": ["app.yaml"], "commonLabels": {"a": "b"}},
        {"resources": ["app.yaml"], "patches": [{"path": "app.yaml", "target": {"kind": "Deployment"}}]},
        {"resources": ["app.yaml"], "images": [{"name": "app", "newTag": "x", "tagSuffix": "y"}]},
        {"resources": ["https://github.com/example/base"]},
    ],
)
def test_unsupported_features_are_refused(tmp_path, kustomization):
    _write(tmp_path, {"kustomization.yaml": kustomization, "app.yaml": DEPLOYMENT})
    with pytest.raises(UnsupportedFeature):
        build(tmp_path)


@pytest.mark.parametrize(
    "kustomization",
    [
        {"resources": ["missing.yaml"]},
        {"resources": ["app.yaml", "app.yaml"]},
        {"resources": ["app.yaml"], "patches": [{"path": "other.yaml"}]},
        {"resources": ["app.yaml"], "patches": [{"path": "missing.yaml"}]},
    ],
)
def test_what_kustomize_refuses_is_an_error(tmp_path, kustomization):
    other = {**DEPLOYMENT, "metadata": {"name": "not-there"}}
    _write(tmp_path, {"kustomization.yaml": kustomization, "app.yaml": DEPLOYMENT, "other.yaml": other})
    with pytest.raises(BuildError):
        build(tmp_path)


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        ("app", ("app", None, None)),
        ("app:1.0", ("app", "1.0", None)),
        ("reg.example:5000/team/app", ("reg.example:5000/team/app", None, None)),
        ("reg.example:5000/app:cuda@sha256:ab12", ("reg.example:5000/app", "cuda", "sha256:ab12")),
    ],
)
def test_split_image(image, parts):
    assert split_image(image) == parts
