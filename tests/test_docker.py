"""Static checks of the container set-up (no Docker engine runs here) against the real app."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import REPO_ROOT
from tests.service import ServerProcess

DOCKER = REPO_ROOT / "docker"
SCHEMA = REPO_ROOT / ".cache" / "test-tools" / "compose-spec.json"
RESET = object()


class _ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it, including the ``!reset`` tag of override files."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)


def load_compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader subclass


def merge(base: dict, override: dict) -> dict:
    """Compose's merge of an override file: mappings merge, ``!reset`` removes, rest replaces."""
    out = dict(base)
    for key, value in override.items():
        if value is RESET:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def schema() -> dict:
    if not SCHEMA.is_file():
        pytest.fail(f"compose specification schema missing at {SCHEMA}: run scripts/test.sh")
    return json.loads(SCHEMA.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(DOCKER / "compose.yaml")


@pytest.fixture(scope="module")
def compose_cpu(compose) -> dict:
    return merge(compose, load_compose(DOCKER / "compose.cpu.yaml"))


@pytest.fixture(scope="module")
def compose_ray(compose) -> dict:
    return merge(compose, load_compose(DOCKER / "compose.ray.yaml"))


def test_compose_files_validate_against_the_compose_specification(
    schema, compose, compose_cpu, compose_ray
):
    validator = jsonschema.Draft201909Validator(schema)
    for document in (compose, compose_cpu, compose_ray):
        errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)]
        assert errors == []
    broken = merge(compose, {"services": {"carn-stream": {"ports": "8000"}}})
    assert list(validator.iter_errors(broken)), "the schema really checks"


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}`` and ``${VAR:-default}`` (a default also for an empty value)."""

    def value(match: re.Match) -> str:
        name, default = match.group(1), match.group(3) or ""
        return env.get(name) or default

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", value, text)


def published(document: dict, env: dict[str, str]) -> dict[str, list[str]]:
    """Each service's published ports as ``HOST_IP:PUBLISHED:TARGET`` under ``env``."""
    return {
        name: [interpolate(str(port), env) for port in service.get("ports", [])]
        for name, service in document["services"].items()
    }


def test_ports_are_published_on_loopback_unless_asked(compose, compose_cpu, compose_ray):
    cases = [
        (compose, {"8000", "9090", "3000"}),
        (compose_cpu, {"8000", "9090", "3000"}),
        (compose_ray, {"8000", "9090", "3000", "6379", "8265"}),
    ]
    for document, expected in cases:
        default = published(document, {})
        ports = [entry.split(":") for entries in default.values() for entry in entries]
        # Was "8000:8000", "9090:9090", "3000:3000": every interface, the API without a token
        # and Grafana anonymous.
        assert ports and all(len(p) == 3 and p[0] == "127.0.0.1" for p in ports), default
        assert {p[1] for p in ports} == expected
        opened = published(document, {"CARN_PUBLISH_ADDRESS": "0.0.0.0"})
        assert all(e.startswith("0.0.0.0:") for entries in opened.values() for e in entries)
    text = (DOCKER / "compose.yaml").read_text() + (REPO_ROOT / "README.md").read_text()
    assert "CARN_PUBLISH_ADDRESS=0.0.0.0" in text  # the way to open them is written down


#: The minimum Linux driver NVIDIA's CUDA Toolkit release notes give for the base image's CUDA.
MIN_DRIVER = {"12.8.1": "570.124.06"}


def test_gpu_docs_name_the_driver_and_how_to_bring_the_weights_offline():
    from carn_stream.model import CARNMWeights

    base = re.search(r"^FROM nvidia/cuda:(\d+\.\d+\.\d+)-", (DOCKER / "Dockerfile").read_text(),
                     re.M).group(1)  # fmt: skip
    assert base in MIN_DRIVER, f"CUDA {base}: look up its minimum driver for the docs"
    weights = CARNMWeights.DEFAULT.value
    for doc in (REPO_ROOT / "README.md", DOCKER / "README.md"):
        text = doc.read_text()
        assert f"driver {MIN_DRIVER[base]}" in text and f"CUDA {base}" in text, doc
        assert f"/cache/{weights.filename}" in text and weights.sha256 in text, doc


def test_service_reserves_a_gpu_keeps_data_on_volumes_and_checks_health(compose, compose_cpu):
    app = compose["services"]["carn-stream"]
    devices = app["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert app["environment"]["CARN_STREAM_DEVICE"] == "cuda"
    mounts = {v.split(":")[1] for v in app["volumes"]}
    assert mounts == {"/data", "/cache"}
    assert all(v.split(":")[0] in compose["volumes"] for v in app["volumes"])
    assert "/healthz" in " ".join(app["healthcheck"]["test"])
    cpu = compose_cpu["services"]["carn-stream"]
    assert "deploy" not in cpu and cpu["environment"]["CARN_STREAM_DEVICE"] == "cpu"


def test_ray_compose_has_a_head_one_gpu_per_worker_and_the_api_pointed_at_the_head(compose_ray):
    services = compose_ray["services"]
    head = services["ray-head"]
    assert head["command"][:2] == ["start", "--head"] and "--num-gpus=0" in head["command"]
    port = next(a.split("=")[1] for a in head["command"] if a.startswith("--port="))
    workers = {name: svc for name, svc in services.items() if name.startswith("ray-gpu-")}
    assert len(workers) >= 2
    gpus = []
    for worker in workers.values():
        assert {f"--address=ray-head:{port}", "--num-gpus=1"} <= set(worker["command"])
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        gpus += device["device_ids"]
        assert worker["environment"]["RAY_USAGE_STATS_ENABLED"] == "0"
    assert len(set(gpus)) == len(gpus) == len(workers)  # one GPU each, none shared
    api = services["carn-stream"]
    assert api["environment"]["CARN_STREAM_RAY_ADDRESS"] == f"ray-head:{port}"
    assert "deploy" not in api and api["build"]["args"]["EXTRAS"] == "ray"
    assert {svc["image"] for svc in (api, head, *workers.values())} == {api["image"]}


def test_dockerfile_lints_clean_and_follows_the_house_rules():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is installed by the test extras"
    result = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert ":" in base and not base.endswith(":latest") and "cuda" in base
    assert re.search(r"^USER 10001", text, re.M)  # not root
    assert 'VOLUME ["/data", "/cache"]' in text and "HEALTHCHECK" in text and "/healthz" in text
    assert "CARN_STREAM_DATA_DIR=/data" in text and "CARN_STREAM_CACHE_DIR=/cache" in text


def test_prometheus_scrapes_the_service_and_grafana_is_provisioned(compose):
    prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["carn-stream:8000"] and "carn-stream" in compose["services"]
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert (DOCKER / "prometheus" / "alerts.yml").is_file()
    source = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert source["url"] == "http://prometheus:9090"
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "carn-stream.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {source["uid"]}
    provider = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "dashboards" / "carn-stream.yml").read_text()
    )["providers"][0]
    grafana_mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana_mounts


def queried_metrics() -> set[str]:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "carn-stream.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    names = set()
    for expr in exprs:
        for name in re.findall(r"\bcarn_stream_[a-z_]+", expr):
            names.add(re.sub(r"_(bucket|sum|count|total)$", "", name))
    return names


@pytest.mark.slow
def test_every_metric_the_dashboard_and_alerts_query_is_exported(tmp_path):
    names = queried_metrics()
    wanted = {"stage_seconds", "frame_seconds", "fps", "queue_depth", "jobs", "live_sessions",
              "dropped_frames"}  # fmt: skip
    assert {f"carn_stream_{n}" for n in wanted} <= names  # every panel the dashboard promises
    server = ServerProcess(tmp_path / "data").start()
    try:
        text = server.call("GET", "/metrics").body.decode()
    finally:
        server.stop()
    exported = {family.name for family in text_string_to_metric_families(text)}
    assert names - exported == set()
