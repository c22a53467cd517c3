"""The observability pack (deploy/observability) against the metrics a real server exports.

- Every metric the Grafana dashboard and the alert rules query is in a live scrape of a server on
  Redis, with traffic; process metrics are there too, and ``realtime_redis_up`` follows Redis.
- Channels carry their names; past ``REALTIME_METRICS_MAX_CHANNELS`` they are summed as ``_other``.
- The ServiceMonitor and the PrometheusRule validate against the Prometheus Operator's CRD schemas
  (tests/data/prometheus-operator, unknown fields refused) and point at what deploy/kubernetes holds.
- ``promtool`` (Debian's prometheus package, put in the venv by ``scripts/bootstrap.sh dev``) checks
  the rules and the dashboard's queries, and unit-tests that each alert fires when it should.
- The dashboard is a Grafana dashboard: a data source variable, panels with queries, no overlaps.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
from pathlib import Path

import httpx
import jsonschema
import pytest
import websockets
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import redis_config
from tests.support.auth import API_KEY, AUTH
from tests.support.clients import open_stream, opened
from tests.support.configs import memory_config
from tests.support.processes import ROOT, base_environment, manage
from tests.test_deploy import tool

OBSERVABILITY = ROOT / "deploy" / "observability"
KUBE_DIR = ROOT / "deploy" / "kubernetes"
CRDS = Path(__file__).resolve().parent / "data" / "prometheus-operator"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
METRICS_TOKEN = "scrape-token-for-tests"
SCRAPE = {"Authorization": f"Bearer {METRICS_TOKEN}"}
ALERTS = {
    "RealtimeRedisUnavailable",
    "RealtimeSlowConsumerDisconnectsSpiking",
    "RealtimeChannelNearConnectionLimit",
    "RealtimePublishErrors",
}


# --------------------------------------------------------------------------------------------
# Reading the files and the scrape
# --------------------------------------------------------------------------------------------


def resource(name: str) -> dict:
    """One YAML document of deploy/observability."""
    return yaml.safe_load((OBSERVABILITY / name).read_text())


def kube_resources() -> dict[tuple[str, str], dict]:
    """Every resource of deploy/kubernetes, by (kind, name)."""
    found = {}
    for path in sorted(KUBE_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") != "Kustomization":
                found[(document["kind"], document["metadata"]["name"])] = document
    return found


def dashboard() -> dict:
    """The Grafana dashboard, parsed."""
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def alert_rules() -> list[dict]:
    """Every rule of every group of the PrometheusRule."""
    return [rule for group in resource("prometheusrule.yaml")["spec"]["groups"] for rule in group["rules"]]


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool"}
_KEYWORDS |= {"inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords,
    label names (inside ``{}`` or a ``by``/``on`` list), durations or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)\s*(\()?", text):
        if not match.group(2) and match.group(1) not in _KEYWORDS:
            names.add(match.group(1))
    return names


def scraped(text: str) -> dict[str, list[tuple[dict, float]]]:
    """Sample name (``_bucket``, ``_sum``, ``_count`` and ``_total`` as exposed) -> its (labels, value)s."""
    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def the_value(samples: dict, name: str) -> float:
    """The value of a metric that has one sample."""
    (only,) = samples[name]
    return only[1]


def scrape(server) -> dict[str, list[tuple[dict, float]]]:
    """``GET /metrics`` with the token, parsed by ``scraped``."""
    response = httpx.get(f"{server.http}/metrics", headers=SCRAPE, timeout=10)
    assert response.status_code == 200, response.text
    return scraped(response.text)


def test_metric_names_are_read_from_promql():
    expr = (
        'sum by (channel, le) (rate(a_bucket{x="y", z=~"$job"}[$__rate_interval]))'
        " / on (channel) group_left (name) max without (pod) (b:rate5m offset 5m) > 0.9e1"
        ' and histogram_quantile(0.99, c_total{le="1"}) or vector(1) unless d'
    )
    assert metric_names(expr) == {"a_bucket", "b:rate5m", "c_total", "d"}


# --------------------------------------------------------------------------------------------
# A live server: what the dashboard and the alerts read is exported
# --------------------------------------------------------------------------------------------


def test_every_metric_the_dashboard_and_the_alerts_use_is_exported(start_server, redis_server):
    server = start_server(
        redis_config(redis_server.url), env={"REALTIME_API_KEYS": API_KEY, "METRICS_TOKEN": METRICS_TOKEN}
    )

    async def traffic():
        async with (
            websockets.connect(server.channel_url("chat-1", clientId="a")) as first,
            websockets.connect(server.channel_url("chat-1", clientId="b")) as second,
            httpx.AsyncClient(base_url=server.http) as client,
        ):
            await first.send("hello")
            await asyncio.wait_for(second.recv(), 5)
            pushed = await client.post("/api/v1/channels/chat-1/messages", json={"payload": "push"}, headers=AUTH)
            assert pushed.status_code == 201
            await asyncio.wait_for(first.recv(), 5)
            await asyncio.wait_for(second.recv(), 5)
            # A refusal: realtime_refusals_total has a sample only once one reason was counted.
            async with websockets.connect(server.channel_url("nope")) as refused:
                await asyncio.wait_for(refused.recv(), 5)
            return await asyncio.to_thread(scrape, server)

    samples = asyncio.run(traffic())
    used = {name for _, expr in dashboard_queries() for name in metric_names(expr)}
    used |= {name for rule in alert_rules() for name in metric_names(rule["expr"])}
    # The parse is not vacuous: each subject of the pack is among the names it found.
    assert {
        "realtime_connections",
        "realtime_channel_connections_limit",
        "realtime_messages_published_total",
        "realtime_deliveries_total",
        "realtime_publish_errors_total",
        "realtime_slow_consumer_disconnects_total",
        "realtime_redis_up",
        "realtime_publish_to_deliver_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
    } <= used
    assert used - samples.keys() == set(), "queried but not exported"

    assert the_value(samples, "realtime_redis_up") == 1
    assert the_value(samples, "realtime_messages_published_total") == 2
    assert samples["realtime_connections"] == [({"channel": "chat-1", "channel_name": "chat", "transport": "WS"}, 2.0)]
    assert samples["realtime_channel_connections_limit"] == [({"channel": "chat-1", "channel_name": "chat"}, 5.0)]
    # prometheus-client's own process and platform collectors, on the server's process.
    assert the_value(samples, "process_cpu_seconds_total") > 0
    assert the_value(samples, "process_resident_memory_bytes") > 20 * 2**20
    assert 3 <= the_value(samples, "process_open_fds") < the_value(samples, "process_max_fds")
    assert samples["python_info"][0][0]["implementation"] == "CPython"
    # The collector's work per generation: the start-up collection before the heap is frozen is a full one.
    collections = {labels["generation"]: value for labels, value in samples["python_gc_collections_total"]}
    assert set(collections) == {"0", "1", "2"} and collections["2"] >= 1


def test_redis_up_follows_redis(start_server, redis_server):
    server = start_server(redis_config(redis_server.url), env={"METRICS_TOKEN": METRICS_TOKEN})
    assert the_value(scrape(server), "realtime_redis_up") == 1
    redis_server.stop()
    down = scrape(server)
    assert the_value(down, "realtime_redis_up") == 0
    assert "realtime_messages_published_total" in down, "the rest is still exported"


def test_redis_up_is_absent_without_redis(start_server):
    samples = scrape(start_server(env={"METRICS_TOKEN": METRICS_TOKEN}))
    assert "realtime_redis_up" not in samples
    assert "process_open_fds" in samples


FIVE_CHANNELS = (
    memory_config()
    + """
  alpha: {id: "ch-a", type: "WS", max_of_channel_connections: 10}
  beta: {id: "ch-b", type: "WS", max_of_channel_connections: 20}
  gamma: {id: "ch-c", type: "WS", max_of_channel_connections: 30}
  delta: {id: "ch-d", type: "WS", max_of_channel_connections: 40}
  epsilon: {id: "ch-e", type: "SSE", max_of_channel_connections: 50}
"""
)


def test_channels_past_the_limit_are_summed_as_other(start_server):
    server = start_server(FIVE_CHANNELS, env={"REALTIME_METRICS_MAX_CHANNELS": "2", "METRICS_TOKEN": METRICS_TOKEN})
    wanted = {"ch-a": 1, "ch-b": 3, "ch-c": 2, "ch-d": 1}

    async def scenario():
        sockets = [
            await websockets.connect(server.channel_url(channel, clientId=f"c{index}"))
            for channel, count in wanted.items()
            for index in range(count)
        ]
        try:
            async with open_stream(server.channel_url("ch-e", scheme="http", clientId="s")) as (_, events):
                await opened(events)
                return await asyncio.to_thread(scrape, server)
        finally:
            for socket in sockets:
                await socket.close()

    samples = asyncio.run(scenario())
    connections = {
        (labels["channel"], labels["transport"]): (labels["channel_name"], value)
        for labels, value in samples["realtime_connections"]
    }
    # At most 2 channels one by one (the busiest, shown by name), plus _other per transport.
    assert connections == {
        ("ch-b", "WS"): ("beta", 3.0),
        ("ch-c", "WS"): ("gamma", 2.0),
        ("_other", "WS"): ("_other", 2.0),
        ("_other", "SSE"): ("_other", 1.0),
    }
    limits = {
        labels["channel"]: (labels["channel_name"], value)
        for labels, value in samples["realtime_channel_connections_limit"]
    }
    assert limits == {"ch-b": ("beta", 20.0), "ch-c": ("gamma", 30.0)}


@pytest.mark.parametrize("value", ["-1", "ten", "1.5", "٣"])
def test_a_bad_max_channels_setting_stops_the_start(value):
    result = manage("check", env=base_environment(REALTIME_METRICS_MAX_CHANNELS=value), check=False)
    assert result.returncode == 2
    assert f"REALTIME_METRICS_MAX_CHANNELS={value} is not a whole number" in result.stderr


# --------------------------------------------------------------------------------------------
# The ServiceMonitor and the PrometheusRule: the CRDs' schemas, and what they point at
# --------------------------------------------------------------------------------------------


def strict(schema: object) -> object:
    """The schema with unknown properties refused wherever it lists properties (the API server
    prunes them silently, so a misspelt field would be lost without a word)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    return schema


def crd_validator(kind: str) -> tuple[str, jsonschema.Draft7Validator]:
    """``(apiVersion, validator)`` of the served version of one of the vendored CRDs."""
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = [version for version in crd["spec"]["versions"] if version["served"]]
            schema = strict(version["schema"]["openAPIV3Schema"])
            return f"{crd['spec']['group']}/{version['name']}", jsonschema.Draft7Validator(schema)
    raise AssertionError(f"no CRD for {kind} in {CRDS}")


def schema_errors(document: dict) -> list[str]:
    """What the CRD of the document's kind finds wrong with it."""
    api_version, validator = crd_validator(document["kind"])
    errors = (
        [f"apiVersion {document['apiVersion']}, not {api_version}"] if document["apiVersion"] != api_version else []
    )
    return errors + [f"{'/'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(document)]


@pytest.mark.parametrize("name", ["servicemonitor.yaml", "prometheusrule.yaml"])
def test_custom_resources_match_the_operators_schema(name):
    assert schema_errors(resource(name)) == []


def test_the_schema_check_refuses_a_misspelt_field():
    monitor = resource("servicemonitor.yaml")
    monitor["spec"]["endpoints"][0]["intervall"] = monitor["spec"]["endpoints"][0].pop("interval")
    assert any("intervall" in error for error in schema_errors(monitor))
    rule = resource("prometheusrule.yaml")
    rule["spec"]["groups"][0]["rules"][0]["for"] = "one minute"
    assert any("one minute" in error for error in schema_errors(rule))


def test_the_servicemonitor_scrapes_the_service_with_the_metrics_token():
    kube = kube_resources()
    monitor = resource("servicemonitor.yaml")
    service = kube[("Service", "realtime")]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert not selector.items() <= kube[("Service", "realtime-redis")]["metadata"]["labels"].items()

    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The token comes from the Secret the Deployment gives the pods as METRICS_TOKEN, never written here.
    assert endpoint["authorization"]["type"] == "Bearer"
    credentials = endpoint["authorization"]["credentials"]
    assert set(credentials) == {"name", "key"}
    secret = kube[("Secret", credentials["name"])]
    assert secret["stringData"][credentials["key"]].startswith("REPLACE-ME")
    (container,) = kube[("Deployment", "realtime")]["spec"]["template"]["spec"]["containers"]
    env = {entry["name"]: entry for entry in container["env"]}
    assert env["METRICS_TOKEN"]["valueFrom"]["secretKeyRef"] == credentials

    # Prometheus sends Host: <pod IP>:<port>, so the pods allow their own IP, set before it is used.
    names = [entry["name"] for entry in container["env"]]
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert names.index("POD_IP") < names.index("DJANGO_ALLOWED_HOSTS")
    assert "$(POD_IP)" in env["DJANGO_ALLOWED_HOSTS"]["value"].split(",")


def test_kustomization_lists_the_pack_in_the_services_namespace():
    kustomization = resource("kustomization.yaml")
    assert kustomization["namespace"] == yaml.safe_load((KUBE_DIR / "kustomization.yaml").read_text())["namespace"]
    assert sorted(kustomization["resources"]) == ["prometheusrule.yaml", "servicemonitor.yaml"]
    (generated,) = kustomization["configMapGenerator"]
    assert generated["files"] == [DASHBOARD.name]
    assert generated["options"]["labels"] == {"grafana_dashboard": "1"}


def test_each_alert_is_complete():
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


# --------------------------------------------------------------------------------------------
# promtool: the rules and the dashboard's queries parse, and the alerts fire when they should
# --------------------------------------------------------------------------------------------


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run promtool in ``cwd`` (rule files name each other relative to it)."""
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def rule_groups() -> dict:
    """The PrometheusRule's groups as a Prometheus rule file."""
    return {"groups": resource("prometheusrule.yaml")["spec"]["groups"]}


def test_promtool_accepts_the_rules(tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    result = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_refuses_a_broken_rule(tmp_path):
    groups = rule_groups()
    groups["groups"][0]["rules"][0]["expr"] = "min by (pod) (realtime_redis_up == 0"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    result = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "unclosed left parenthesis" in result.stdout + result.stderr


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by what they stand for."""
    return expr.replace("$__rate_interval", "2m").replace("$job", ".+").replace("$instance", ".+")


def test_promtool_accepts_every_dashboard_query(tmp_path):
    queries = dashboard_queries()
    rules = [
        {"record": f"dashboard:query_{index}", "expr": grafana_to_promql(expr)}
        for index, (_, expr) in enumerate(queries)
    ]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout
    assert "$" not in "".join(rule["expr"] for rule in rules), "a Grafana variable left unreplaced"


def series(name: str, values: str, **labels: str) -> dict:
    """An input series of a promtool unit test."""
    written = ", ".join(f'{key}="{value}"' for key, value in {"namespace": "realtime", **labels}.items())
    return {"series": f"{name}{{{written}}}", "values": values}


def fired(alert: str, at: str, *expected: dict) -> dict:
    """A promtool alert test: at ``at``, ``alert`` fires with exactly the ``expected`` label sets (none: silent)."""
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": labels} for labels in expected]}


# Each alert fires on what it is about, and not on its near miss: series one sample a minute.
ALERT_TESTS = [
    {
        "interval": "1m",
        "input_series": [
            series("realtime_redis_up", "1 1 0 0 0 0", pod="p1"),
            series("realtime_redis_up", "1 1 1 1 1 1", pod="p2"),
        ],
        "alert_rule_test": [
            fired("RealtimeRedisUnavailable", "2m"),  # pending: down for less than a minute
            fired("RealtimeRedisUnavailable", "4m", {"severity": "critical", "namespace": "realtime", "pod": "p1"}),
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            # 12 a minute (0.2/s) in one namespace, 3 a minute in another.
            series("realtime_slow_consumer_disconnects_total", "0+6x30", pod="p1"),
            series("realtime_slow_consumer_disconnects_total", "0+6x30", pod="p2"),
            series("realtime_slow_consumer_disconnects_total", "0+3x30", namespace="calm", pod="p3"),
        ],
        "alert_rule_test": [
            fired("RealtimeSlowConsumerDisconnectsSpiking", "8m"),
            fired("RealtimeSlowConsumerDisconnectsSpiking", "20m", {"severity": "warning", "namespace": "realtime"}),
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            # alpha: 50 + 46 of 100 over two pods; beta: 50 of 100; _other: many, with no limit.
            series("realtime_connections", "50x10", pod="p1", channel="ch-a", channel_name="alpha", transport="WS"),
            series("realtime_connections", "46x10", pod="p2", channel="ch-a", channel_name="alpha", transport="SSE"),
            series("realtime_channel_connections_limit", "100x10", pod="p1", channel="ch-a", channel_name="alpha"),
            series("realtime_channel_connections_limit", "100x10", pod="p2", channel="ch-a", channel_name="alpha"),
            series("realtime_connections", "50x10", pod="p1", channel="ch-b", channel_name="beta", transport="WS"),
            series("realtime_channel_connections_limit", "100x10", pod="p1", channel="ch-b", channel_name="beta"),
            series(
                "realtime_connections", "5000x10", pod="p1", channel="_other", channel_name="_other", transport="WS"
            ),
        ],
        "alert_rule_test": [
            fired("RealtimeChannelNearConnectionLimit", "3m"),
            fired(
                "RealtimeChannelNearConnectionLimit",
                "6m",
                {"severity": "warning", "namespace": "realtime", "channel": "ch-a", "channel_name": "alpha"},
            ),
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            # p1: the layer refuses a run a minute; p2: no errors (every counter is always exported).
            series("realtime_publish_errors_total", "0+1x20", pod="p1"),
            series("realtime_publish_outcomes_unknown_total", "0x20", pod="p1"),
            series("realtime_fanout_repairs_abandoned_total", "0x20", pod="p1"),
            series("realtime_publish_errors_total", "0x20", pod="p2"),
            series("realtime_publish_outcomes_unknown_total", "0x20", pod="p2"),
            series("realtime_fanout_repairs_abandoned_total", "0x20", pod="p2"),
        ],
        "alert_rule_test": [
            fired("RealtimePublishErrors", "3m"),
            fired("RealtimePublishErrors", "10m", {"severity": "warning", "namespace": "realtime", "pod": "p1"}),
        ],
    },
]


def test_each_alert_fires_on_what_it_is_about(tmp_path):
    groups = rule_groups()
    # promtool compares annotations too; these tests are about the expressions, durations and labels.
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": ALERT_TESTS}
    assert {test["alert_rule_test"][0]["alertname"] for test in ALERT_TESTS} == ALERTS
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_an_alert_test_fails_when_the_threshold_is_wrong(tmp_path):
    groups = rule_groups()
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
            rule["expr"] = rule["expr"].replace("> 0.9", "> 0.99")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": copy.deepcopy(ALERT_TESTS[2:3])}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "RealtimeChannelNearConnectionLimit" in result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# The Grafana dashboard
# --------------------------------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard():
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["uid"] and board["title"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["datasource"]["uid"] == "${datasource}"

    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "gauge", "bargauge", "table"}, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"]), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == "${datasource}", panel["title"]
            # Every series of a panel comes from the instances the variables select.
            for name in metric_names(target["expr"]):
                assert re.search(rf'{re.escape(name)}\{{job=~"\$job", instance=~"\$instance"', target["expr"]), name
