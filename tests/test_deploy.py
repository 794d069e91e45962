"""The operations files in deploy/ agree with the code they deploy.

Configs load with the real loader, command lines parse with the real argument parsers, probe
paths are served by the real HTTP handler, and every metric name in the alert rules and the
dashboard is one a live :class:`streamer.metrics.Metrics` registry exports.
"""

from __future__ import annotations

import argparse
import configparser
import json
import re
import shlex
import shutil
import subprocess
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zmq
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hitstream.http_base import TOKEN_ENV
from streamer import replay as replay_cmd
from streamer import serve as serve_cmd
from streamer.config import MetricsConfig, load_config
from streamer.decode import END_OF_RUN_SOURCE
from streamer.http_server import StatusServer
from streamer.metrics import Metrics
from streamer.model_swap import model_roots
from streamer.pipeline import Pipeline
from streamer.protocol import serialize
from tests.helpers_stream import running_pipeline
from tests.procs import free_endpoint
from tests.tiny_bundle import make_tiny_bundle

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
PROM = DEPLOY / "prometheus"
UNIT = DEPLOY / "systemd" / "hitstream-streamer@.service"
PYPROJECT = ROOT / "pyproject.toml"
REPLAY_UNIT = DEPLOY / "systemd" / "hitstream-replay.service"
CONTAINERFILE = DEPLOY / "Containerfile"
DASHBOARD = DEPLOY / "grafana" / "hitstream-dashboard.json"

# Series Prometheus makes itself (not the streamer): the scrape health of each target.
PROMETHEUS_SERIES = {"up"}
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk",
    "bottomk", "quantile", "count_values", "group", "inf", "nan",
}  # fmt: skip
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
MATCHERS = re.compile(r"\{([^{}]*)\}")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
IDENT = re.compile(r"(?<![\w.$])([A-Za-z_:][\w:]*)")


# -- what the streamer really exports -----------------------------------------------------


def exported() -> tuple[set[str], set[str]]:
    """(series names, label names) of a live registry with every labelled metric in use."""
    m = Metrics(classes=("single", "multiple", "empty", "other"), hit_classes=("single",))
    m.observe_labels(np.array([0, 2, 2, 3]))
    m.rejected("shape")
    m.dropped("queue_full", 1)
    m.queue_depth.labels(queue="infer").set(1)
    m.model_swaps.labels(result="refused").inc()
    m.ignored_source_messages.labels(source="DET/1").inc()
    m.model_info.info({"name": "n", "version": "1", "path": "/m"})
    m.engine_info.info({"provider": "CPU", "providers": "CPUExecutionProvider"})
    m.batch_latency.observe(0.01)
    m.frame_latency.observe(0.01)
    text = generate_latest(m.registry).decode()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            names |= {name + s for s in suffixes}
    labels = {
        label
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        for label in sample.labels
    }
    return names, labels


NAMES, LABELS = exported()


@pytest.fixture(scope="module")
def http() -> Iterator[StatusServer]:
    """A running status server on an ephemeral loopback port."""
    server = StatusServer(Metrics(), "127.0.0.1", 0).start()
    yield server
    server.stop()


def get(server: StatusServer, path: str) -> tuple[int, bytes]:
    """(status, body) of a real HTTP GET."""
    try:
        with urllib.request.urlopen(server.url + path, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_registry_exports_what_the_deploy_files_rely_on() -> None:
    needed = {
        "hitstream_frames_received_total", "hitstream_frames_classified_total",
        "hitstream_frames_rejected_total", "hitstream_frames_dropped_total",
        "hitstream_frames_kept_total", "hitstream_class_frames_total", "hitstream_hit_rate",
        "hitstream_class_fraction", "hitstream_batch_inference_seconds_bucket",
        "hitstream_frame_latency_seconds_bucket", "hitstream_queue_depth",
        "hitstream_bytes_written", "hitstream_files_rotated_total",
        "hitstream_output_free_bytes", "hitstream_model_info", "hitstream_engine_info",
        "hitstream_model_swaps_total", "hitstream_up", "hitstream_last_frame_timestamp_seconds",
        "hitstream_background_level", "hitstream_background_warm", "hitstream_background_frames",
        "hitstream_background_age_seconds",
    }  # fmt: skip
    assert needed <= NAMES, needed - NAMES
    assert {"reason", "class_name", "queue", "result", "version", "provider", "le"} <= LABELS


# -- PromQL ---------------------------------------------------------------------------------


def promql_refs(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression uses; functions and keywords left out."""
    expr = re.sub(r"\$\{(\w+)\}", r"$\1", expr)  # Grafana ${var} -> $var
    labels = {
        name
        for body in MATCHERS.findall(STRING.sub('""', expr))
        for name in re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", body)
    }
    for _, group in GROUPING.findall(expr):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    bare = STRING.sub(" ", expr)
    bare = GROUPING.sub(" ", bare)
    bare = MATCHERS.sub(" ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)  # range selectors
    bare = re.sub(r"\boffset\s+\S+", " ", bare)
    names = set()
    for match in IDENT.finditer(bare):
        word = match.group(1)
        rest = bare[match.end() :].lstrip()
        if word.lower() in PROMQL_WORDS or rest.startswith("("):
            continue
        names.add(word)
    return names, labels


def test_promql_reference_extraction() -> None:
    names, labels = promql_refs(
        'histogram_quantile(0.99, sum by (worker, le) (rate(x_bucket{job=~"$job"}[5m])))'
        " / on(instance) group_left y > 50 * 1024^3 and z offset 5m unless up == 1e9"
    )
    assert names == {"x_bucket", "y", "z", "up"}
    assert labels == {"worker", "le", "job", "instance"}


def target_labels() -> set[str]:
    """Labels Prometheus attaches to every series of the hitstream targets."""
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    labels = {"job", "instance"}
    for job in cfg["scrape_configs"]:
        for static in job.get("static_configs", []):
            labels |= set(static.get("labels", {}))
        for relabel in job.get("relabel_configs", []):
            if "target_label" in relabel:
                labels.add(relabel["target_label"])
    return labels


def check_promql(expr: str, where: str) -> set[str]:
    names, labels = promql_refs(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - NAMES - PROMETHEUS_SERIES
    assert not unknown, f"{where}: {sorted(unknown)} not exported by the streamer"
    unknown_labels = labels - LABELS - target_labels()
    assert not unknown_labels, f"{where}: unknown labels {sorted(unknown_labels)}"
    return names


# -- Prometheus --------------------------------------------------------------------------


def test_prometheus_config_scrapes_the_workers(http: StatusServer, tmp_path: Path) -> None:
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    for rule_file in cfg["rule_files"]:
        assert (PROM / rule_file).is_file(), rule_file
    jobs = cfg["scrape_configs"]
    assert len({j["job_name"] for j in jobs}) == len(jobs)
    metrics_path = {j.get("metrics_path", "/metrics") for j in jobs}
    for path in metrics_path:
        code, body = get(http, path)
        assert code == 200 and b"hitstream_up" in body, path
    static = [t for j in jobs for t in j.get("static_configs", [])]
    assert static and all("worker" in t["labels"] for t in static)
    ports = [int(target.rsplit(":", 1)[1]) for t in static for target in t["targets"]]
    assert MetricsConfig().port in ports
    hosts = [target for t in static for target in t["targets"]]
    assert len(set(hosts)) == len(hosts), "two workers on one host need different ports"
    _promtool_check_config(PROM / "prometheus.yml", tmp_path)


def test_alert_rules_are_complete_and_use_real_metrics() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    jobs = {j["job_name"] for j in yaml.safe_load((PROM / "prometheus.yml").read_text())[
        "scrape_configs"
    ]}  # fmt: skip
    used: set[str] = set()
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    names = [a["alert"] for a in alerts]
    assert len(set(names)) == len(names)
    for a in alerts:
        where = a["alert"]
        assert {"alert", "expr", "for", "labels", "annotations"} <= set(a), where
        assert re.fullmatch(r"\d+[smhdwy]", a["for"]), f"{where}: for = {a['for']!r}"
        assert a["labels"]["severity"] in ("critical", "warning", "info"), where
        assert {"summary", "description"} <= set(a["annotations"]), where
        used |= check_promql(a["expr"], where)
        for job_op, value in re.findall(r'\bjob\s*(=~|=)\s*"([^"]*)"', a["expr"]):
            matches = [j for j in jobs if re.fullmatch(value, j) or value == j]
            assert matches, f"{where}: job{job_op}{value!r} matches no scrape job"
        templated = set(re.findall(r"\$labels\.(\w+)", json.dumps(a["annotations"])))
        assert templated <= LABELS | target_labels(), f"{where}: {templated}"
    # the conditions the operators asked for
    assert {
        "hitstream_frames_received_total",  # stalled feed, drop rate
        "hitstream_frames_dropped_total",
        "hitstream_frames_rejected_total",
        "hitstream_output_free_bytes",
        "hitstream_model_swaps_total",
        "hitstream_frame_latency_seconds_bucket",
        "hitstream_up",
        "up",
        "hitstream_background_warm",  # the run background never gets warm
        "hitstream_feed_refused",  # every message refused: the settings do not fit the feed
    } <= used
    assert "HitstreamBackgroundNotWarm" in names
    assert any("histogram_quantile(0.99" in a["expr"] for a in alerts)
    _promtool_check("rules", PROM / "alerts.yml")


# -- Grafana -----------------------------------------------------------------------------


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(all_panels(p.get("panels", [])))
    return out


def test_dashboard_panels_query_real_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = all_panels(dash["panels"])
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    used: set[str] = set()
    exprs: list[str] = []
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        for t in p["targets"]:
            used |= check_promql(t["expr"], f"panel {p['title']!r}")
            exprs.append(t["expr"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["definition"])
            assert inner, var["definition"]
            check_promql(inner.group(1), f"variable {var['name']}")
            assert inner.group(2) in LABELS | target_labels()
    assert {
        "hitstream_frames_classified_total",  # throughput
        "hitstream_hit_rate",
        "hitstream_class_fraction",
        "hitstream_frame_latency_seconds_bucket",
        "hitstream_frames_dropped_total",
        "hitstream_frames_rejected_total",
        "hitstream_queue_depth",
        "hitstream_bytes_written",
        "hitstream_files_rotated_total",
        "hitstream_model_info",
        "hitstream_engine_info",
        "hitstream_background_level",
        "hitstream_background_warm",
    } <= used
    text = " ".join(exprs)
    assert "histogram_quantile(0.5," in text and "histogram_quantile(0.99," in text


# -- Kubernetes --------------------------------------------------------------------------


def k8s_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    return [
        doc
        for name in files
        for doc in yaml.safe_load_all((K8S / name).read_text())
        if doc is not None
    ]


def test_kubernetes_manifests(tmp_path: Path, http: StatusServer) -> None:
    objs = k8s_objects()
    kinds = {o["kind"] for o in objs}
    assert {"ConfigMap", "Service", "PersistentVolumeClaim"} <= kinds
    assert kinds & {"StatefulSet", "Deployment"}
    for o in objs:  # applies to any namespace: kubectl apply -k ... -n <ns>
        assert "namespace" not in o["metadata"], o["metadata"]["name"]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    (workload,) = by_kind.get("StatefulSet", []) + by_kind.get("Deployment", [])
    pod = workload["spec"]["template"]
    spec = pod["spec"]
    assert spec["terminationGracePeriodSeconds"] >= 60  # time to drain on SIGTERM
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    (c,) = spec["containers"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    for part in ("requests", "limits"):
        assert int(c["resources"][part]["nvidia.com/gpu"]) == 1
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}

    # probes on paths the streamer serves, on the metrics port
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    probe_ports = set()
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        if kind in c:
            h = c[kind]["httpGet"]
            assert get(http, h["path"])[0] != 404, h["path"]
            probe_ports.add(ports.get(h["port"], h["port"]))

    # the command line parses with the real `streamer serve` parser
    args = parse_serve(c["args"])
    env = {e["name"] for e in c.get("env", [])}
    assert args.worker == "$(POD_NAME)" and "POD_NAME" in env

    # the ConfigMap's TOML loads, listens on the pod IP, on the probed port
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    (cm,) = by_kind["ConfigMap"]
    cm_mount = next(m for n, m in mounts.items() if "configMap" in volumes[n])
    assert volumes[cm_mount["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    config_name = Path(args.config).relative_to(cm_mount["mountPath"]).as_posix()
    toml = tmp_path / config_name
    toml.write_text(cm["data"][config_name], encoding="utf-8")
    cfg = load_config(toml)
    assert cfg.metrics.host == "0.0.0.0"  # 127.0.0.1 in a pod would fail every probe
    assert probe_ports == {cfg.metrics.port} == {ports["metrics"]}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(cfg.metrics.port)

    # output on a writable PVC, the model on a mounted volume
    claims = {o["metadata"]["name"] for o in by_kind["PersistentVolumeClaim"]}
    out_mount = next(m for m in mounts.values() if Path(m["mountPath"]) == cfg.output.dir)
    assert not out_mount.get("readOnly", False)
    assert volumes[out_mount["name"]]["persistentVolumeClaim"]["claimName"] in claims
    assert any(cfg.model.is_relative_to(m["mountPath"]) for m in mounts.values())
    if c["securityContext"].get("readOnlyRootFilesystem"):
        assert "/tmp" in {m["mountPath"] for m in mounts.values()}

    # the Service exposes the metrics port of the pods
    (svc,) = by_kind["Service"]
    labels = pod["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    svc_port = next(p for p in svc["spec"]["ports"] if p["name"] == "metrics")
    assert ports.get(svc_port["targetPort"], svc_port["targetPort"]) == cfg.metrics.port
    if workload["kind"] == "StatefulSet":
        assert workload["spec"]["serviceName"] == svc["metadata"]["name"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()


# -- control locked as shipped -------------------------------------------------------------

# what a committed secret would look like: a bearer value, the token variable set to a value
TOKEN_LITERAL = re.compile(
    rf"Bearer\s+[\w.~+/-]{{8,}}|{TOKEN_ENV}\s*[=:]\s*[\"']?[\w.~+/-]{{4,}}", re.IGNORECASE
)


def test_no_token_value_is_committed_in_deploy() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    assert CONTAINERFILE in files and K8S / "configmap.yaml" in files
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        assert not TOKEN_LITERAL.search(text), (path, TOKEN_LITERAL.search(text))
    assert TOKEN_LITERAL.search("Authorization: Bearer 0a1b2c3d4e5f")  # the check can fail
    assert TOKEN_LITERAL.search(f"{TOKEN_ENV}=s3cret")
    assert not TOKEN_LITERAL.search('"Authorization: Bearer <token>"')


def test_kubernetes_control_is_locked_until_a_secret_is_mounted(tmp_path: Path) -> None:
    """The pods listen on the pod IP; POST /model needs the token of a Secret mounted as a
    file (optional: without it control is refused, the pods still start), takes bundles on
    the read-only models volume only, and the streamer runs as non-root."""
    objs = k8s_objects()
    assert not [o for o in objs if o["kind"] == "Secret"]  # created by hand, never committed
    (workload,) = [o for o in objs if o["kind"] in ("StatefulSet", "Deployment")]
    spec = workload["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] not in (0, None)
    assert c.get("securityContext", {}).get("runAsUser", 1) != 0
    for e in c.get("env", []):  # the token never as a literal value
        assert e["name"] != TOKEN_ENV or "valueFrom" in e, e
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    secrets = {p: volumes[m["name"]]["secret"] for p, m in mounts.items()
               if "secret" in volumes[m["name"]]}  # fmt: skip
    assert secrets and all(s.get("optional") is True for s in secrets.values()), secrets
    assert all(mounts[p].get("readOnly") for p in secrets)

    (cm,) = [o for o in objs if o["kind"] == "ConfigMap"]
    text = cm["data"]["streamer.toml"]
    (tmp_path / "s.toml").write_text(text, encoding="utf-8")
    cfg = load_config(tmp_path / "s.toml")
    assert cfg.metrics.host == "0.0.0.0"
    # the token file: unset (control refused) or on the mounted Secret; the documented one too
    documented = re.findall(r'^\s*#\s*token_file\s*=\s*"([^"]+)"', text, re.M)
    assert documented, "the ConfigMap documents token_file"
    for token_file in [*documented, *([cfg.metrics.token_file] if cfg.metrics.token_file else [])]:
        assert any(Path(token_file).is_relative_to(p) for p in secrets), token_file
    for name in {s["secretName"] for s in secrets.values()}:
        assert f"kubectl create secret generic {name}" in text  # how to make it
    # POST /model: the models volume only, mounted read-only, the model on it
    (root,) = cfg.metrics.model_roots or []
    assert str(root) in mounts and mounts[str(root)].get("readOnly") is True
    assert "persistentVolumeClaim" in volumes[mounts[str(root)]["name"]]
    assert cfg.model.is_relative_to(root)


def test_container_control_is_locked_until_a_token_is_given() -> None:
    """The image's command binds 0.0.0.0 with no token (control refused) and POST /model
    limited to the image's model store; nothing token-like is copied or set."""
    ins = instructions(CONTAINERFILE)
    cmd = parse_serve(json.loads(next(a for i, a in ins if i == "CMD")))
    assert cmd.metrics_host == "0.0.0.0"
    cfg = load_config(DEPLOY / "streamer.toml", {"model": cmd.model})
    assert cfg.metrics.token_file is None
    assert not [a for i, a in ins if i in ("ENV", "ARG") and TOKEN_ENV in a]
    copies = [a.split() for i, a in ins if i == "COPY"]
    assert not [c for c in copies if any("token" in part.lower() for part in c)]
    assert ["models", "/opt/hitstream/models"] in copies
    assert Path(cmd.model).parent == Path("/opt/hitstream/models")
    assert model_roots(cmd.model, cfg.metrics.model_roots) == (
        Path("/opt/hitstream/models").resolve(),
    )
    (user,) = [a for i, a in ins if i == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    # deploy/streamer.toml documents the keys that lock control
    text = (DEPLOY / "streamer.toml").read_text(encoding="utf-8")
    metrics = text.split("[metrics]", 1)[1].split("\n[", 1)[0]
    assert "# token_file = " in metrics and "# model_roots = " in metrics


# -- command lines -------------------------------------------------------------------------


def parse_with(module: Any, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    args, unknown = parser.parse_known_args(argv)
    assert not unknown, f"{module.__name__} has no arguments {unknown}"
    return args


def parse_serve(argv: list[str]) -> argparse.Namespace:
    """``serve ARGS...`` -> the namespace of the real ``streamer serve`` parser."""
    assert argv[:2] == ["serve", "--config"], argv
    return parse_with(serve_cmd, argv[1:])


# -- systemd -------------------------------------------------------------------------------


def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string(path.read_text(encoding="utf-8"))
    return unit


def exec_argv(line: str) -> list[str]:
    argv = shlex.split(line)
    assert Path(argv[0]).is_absolute() and argv[0].endswith("/streamer"), argv
    return argv[1:]


def test_systemd_streamer_unit() -> None:
    unit = read_unit(UNIT)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    s = unit["Service"]
    args = parse_serve(exec_argv(s["ExecStart"]))
    assert str(args.config) == "/etc/hitstream/%i.toml"
    assert args.worker == "%i"
    assert s["Restart"] == "on-failure"
    assert s["KillSignal"] == "SIGTERM"
    assert int(s["TimeoutStopSec"]) >= 60
    assert "-HUP" in s["ExecReload"] and "$MAINPID" in s["ExecReload"]
    assert s["NoNewPrivileges"] == "yes" and s["PrivateTmp"] == "yes"
    assert s["ProtectSystem"] == "strict" and s["ReadWritePaths"].strip()
    assert s["User"] not in ("", "root", "0")
    assert "PrivateDevices" not in s  # it would hide /dev/nvidia* from the GPU provider
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_replay_unit() -> None:
    unit = read_unit(REPLAY_UNIT)
    s = unit["Service"]
    argv = exec_argv(s["ExecStart"])
    assert argv[0] == "replay"
    args = parse_with(replay_cmd, argv[1:])
    assert args.mode in replay_cmd.MODES
    assert "*" not in args.endpoint  # bind a named interface (STYLE.md)
    assert s["User"] not in ("", "root", "0") and s["NoNewPrivileges"] == "yes"


# -- Containerfile -----------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def test_containerfile_installs_serving_extras_only(http: StatusServer) -> None:
    ins = instructions(CONTAINERFILE)
    args = dict(a.split("=", 1) for i, a in ins if i == "ARG" and "=" in a)
    assert ins[0][0] == "ARG" and next(a for i, a in ins if i == "FROM") == "${BASE_IMAGE}"
    assert "cuda" in args["BASE_IMAGE"] and "cudnn" in args["BASE_IMAGE"]
    assert args["HITSTREAM_EXTRA"] == "gpu"
    runs = " ".join(a for i, a in ins if i == "RUN")
    installs = re.findall(r"pip install (\S+)", runs)
    specs = [s.strip("\"'") for s in installs if not s.startswith("-")]
    assert specs == [".[${HITSTREAM_EXTRA}]"], specs
    allowed = re.search(r'case "\$\{HITSTREAM_EXTRA\}" in ([\w|]+)\)', runs)
    assert allowed and set(allowed.group(1).split("|")) == {"gpu", "cpu"}
    assert "--build-arg HITSTREAM_EXTRA=cpu" in CONTAINERFILE.read_text()  # documented
    text = " ".join(a for _, a in ins)
    assert not re.search(r"\[[^\]]*train", text) and "tensorflow==" not in text.lower()
    assert '! python -c "import tensorflow"' in runs  # the build fails if TF sneaks in
    (user,) = [a for i, a in ins if i == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    (health,) = [a for i, a in ins if i == "HEALTHCHECK"]
    assert f"127.0.0.1:{MetricsConfig().port}/ready" in health
    assert get(http, "/ready")[0] == 503  # urlopen raises: the health check fails
    http.ready.set()
    try:
        assert get(http, "/ready")[0] == 200
    finally:
        http.ready.clear()
    assert [a for i, a in ins if i == "EXPOSE"] == [str(MetricsConfig().port)]
    entry = json.loads(next(a for i, a in ins if i == "ENTRYPOINT"))
    cmd = json.loads(next(a for i, a in ins if i == "CMD"))
    assert entry == ["streamer"]
    served = parse_serve(cmd)
    assert served.metrics_host == "0.0.0.0"  # reachable through a published port
    copies = [a.split() for i, a in ins if i == "COPY"]
    assert ["deploy/streamer.toml", str(served.config)] in copies
    assert load_config(DEPLOY / "streamer.toml")  # the copied config loads
    # what `pip install .` needs: pyproject's files and every package the streamer imports
    copied = {src for c in copies for src in c[:-1]}
    needed = {
        "pyproject.toml",
        "README.md",
        *tomllib.loads(PYPROJECT.read_text())["project"]["license-files"],
    }
    imported = {
        n.split(".")[0]
        for p in (ROOT / "streamer").glob("*.py")
        for n in re.findall(r"^(?:from|import) ((?:hitstream|streamer|trainer)\b[\w.]*)",
                            p.read_text(), re.M)
    }  # fmt: skip
    assert "trainer" not in imported
    missing = sorted((needed | imported) - copied)
    assert not missing, f"the Containerfile does not copy {missing}"


# -- the free-space gauge the disk alert needs ----------------------------------------------


def test_pipeline_exports_free_bytes_of_the_output_filesystem(tmp_path: Path) -> None:
    tiny = make_tiny_bundle(tmp_path / "tiny")
    endpoint = free_endpoint()
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.bind(endpoint)
    out = tmp_path / "out"
    cfg = load_config(None, {
        "model": str(tiny), "feed.endpoint": endpoint, "feed.mode": "PULL",
        "output.dir": str(out), "output.min_free_bytes": 0, "engine.max_batch": 8,
    })  # fmt: skip
    metrics = Metrics()
    try:
        with running_pipeline(Pipeline(cfg, metrics=metrics)) as run:
            frames = np.ones((8, 260, 257), np.float32)
            for tid in range(1, 4):
                push.send_multipart(
                    serialize(
                        {"det": {"image.data": frames}},
                        {"det": {"source": "det", "timestamp.tid": tid}},
                    )
                )
            end = {"run": "r", "frames": 24, "trains": 3}
            push.send_multipart(serialize({END_OF_RUN_SOURCE: end}))
            summary = run.wait(60)
    finally:
        push.close(linger=0)
    assert summary.frames_classified == 24
    free = metrics.value("hitstream_output_free_bytes")
    assert 0 < free <= shutil.disk_usage(out).total
    assert b"hitstream_output_free_bytes " in generate_latest(metrics.registry)


# Debian's `prometheus` package is built without Kubernetes service discovery (its
# NEWS.Debian: "Kubernetes support has been completely removed"), so its promtool rejects
# a kubernetes_sd_configs block as an unknown field, and nothing else.
DEBIAN_WITHOUT_K8S_SD = re.compile(r"field kubernetes_sd_configs not found in type config\.\w+")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is not installed, so the Prometheus files cannot be checked: `make test` "
            "installs it with Debian's `prometheus` package (apt-get install prometheus), "
            "which carries promtool"
        )
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def _promtool_check(kind: str, path: Path) -> None:
    """``promtool check <kind> <path>`` passes (fails the test if promtool is missing)."""
    run = _promtool("check", kind, str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr, run.stdout + run.stderr


def _promtool_check_config(path: Path, tmp_path: Path) -> None:
    """``promtool check config`` (which checks the rule files too). With a promtool built
    without Kubernetes discovery (Debian's) the only complaint allowed is that block: then a
    copy whose kubernetes_sd_configs are swapped for a static target, everything else as
    is (relabelling included), must pass."""
    run = _promtool("check", "config", str(path))
    if run.returncode == 0:
        return
    out = run.stdout + run.stderr
    errors = re.findall(r"^\s*line \d+: (.*)$", out, re.MULTILINE)
    assert errors and all(DEBIAN_WITHOUT_K8S_SD.fullmatch(e.strip()) for e in errors), out
    cfg = yaml.safe_load(path.read_text())
    swapped = 0
    for job in cfg["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job.setdefault("static_configs", []).append({"targets": ["pod.invalid:9108"]})
            swapped += 1
    assert swapped == len(errors), out
    for rule_file in cfg.get("rule_files", []):
        shutil.copyfile(path.parent / rule_file, tmp_path / rule_file)
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(cfg, sort_keys=False))
    _promtool_check("config", copy)
