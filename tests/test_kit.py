"""The operator's kit (conf/grafana, conf/prometheus) names only metrics a running daemon exports.

One real daemon against the simulator and PostgreSQL; its /metrics scrape, taken after ESL events,
records, a refused and a served directory request and an upkeep run, must hold every eslbridge_*
name that the dashboard and the alert rules use. Set ESLBRIDGE_KIT_SCRAPE=FILE to keep the scrape
(.ci/kit feeds it to `promtool check metrics`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.request
from pathlib import Path

import psycopg
import yaml

from eslbridge.accounts.users import add_user
from tests.test_daemon import Env, Sim, get, metrics_url, wait_for

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "conf" / "grafana" / "eslbridge.json"
RULES = ROOT / "conf" / "prometheus" / "eslbridge.rules.yml"
METRIC = re.compile(r"\beslbridge_[a-z0-9_]+\b")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? (\S+)$")


def expressions_in_dashboard() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if "expr" in t]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def expressions_in_rules() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def exported(scrape: str) -> tuple[set[str], dict[str, float]]:
    """Names a scrape exports (histograms as their _bucket/_sum/_count series) and its samples."""
    names: set[str] = set()
    samples: dict[str, float] = {}
    for line in scrape.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.update((f"{name}_bucket", f"{name}_sum", f"{name}_count") if kind == "histogram" else (name,))
        elif (m := SAMPLE.match(line)) and not line.startswith("#"):
            names.add(m.group(1))
            samples[line.rsplit(" ", 1)[0]] = float(m.group(2))
    return names, samples


def directory_status(config: Path, password: str) -> int:
    listen = yaml.safe_load(config.read_text())["directory"]["listen"]
    body = (b"section=directory&tag_name=domain&key_name=name&key_value=127.0.0.1"
            b"&action=sip_auth&user=1000&domain=127.0.0.1")
    auth = base64.b64encode(f"freeswitch:{password}".encode()).decode()
    request = urllib.request.Request(f"http://{listen}/directory", data=body,
                                     headers={"Authorization": f"Basic {auth}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_kit_files_parse_and_name_metrics() -> None:
    dashboard, rules = expressions_in_dashboard(), expressions_in_rules()
    assert len(dashboard) >= 20 and len(rules) >= 15
    assert all(METRIC.search(e) for e in rules if "up{" not in e)
    datasources = {p["datasource"]["type"] for p in json.loads(DASHBOARD.read_text())["panels"] if "datasource" in p}
    assert datasources == {"prometheus", "grafana-postgresql-datasource"}


def test_every_metric_of_the_kit_is_in_a_real_scrape(tmp_path: Path, db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        add_user(conn, "1000", "127.0.0.1", "pw-1000-secret", rounds=4)
    env = Env(tmp_path, db_dsn)
    sim = Sim(tmp_path, "--wait-subscribers", "1", "--calls", "6", "--rate", "30", "--speed", "8",
              "--mix", "bridged=1,busy=1", "--seed", "5")
    config = env.config(sim.port)
    try:
        env.start(config)
        wait_for(lambda: get(metrics_url(config, "/healthz"))[0] == 200, 60, "a healthy daemon")
        assert directory_status(config, "wrong-password") == 403
        assert directory_status(config, "dir-secret") == 200
        sim.wait_line("played")

        def settled() -> str | None:
            _, body = get(metrics_url(config, "/metrics"))
            _, samples = exported(body)
            written = samples.get('eslbridge_records_written_total{table="call_records"}', 0)
            upkept = samples.get('eslbridge_upkeep_runs_total{result="ok"}', 0)
            return body if written >= 1 and upkept >= 1 else None

        scrape = wait_for(settled, 60, "records written and an upkeep run in /metrics")
    finally:
        env.stop_all()
        sim.stop()
    if out := os.environ.get("ESLBRIDGE_KIT_SCRAPE"):
        Path(out).write_text(scrape)

    names, samples = exported(scrape)
    used = {m for e in expressions_in_dashboard() + expressions_in_rules() for m in METRIC.findall(e)}
    assert len(used) >= 20
    assert sorted(used - names) == []
    # The series the alerts watch carry the values this run produced.
    assert samples['eslbridge_directory_requests_total{outcome="forbidden"}'] == 1
    assert samples['eslbridge_directory_requests_total{outcome="found"}'] == 1
    assert samples['eslbridge_esl_connected{node="fs1"}'] == 1
    assert samples["eslbridge_db_up"] == 1
    assert samples['eslbridge_upkeep_runs_total{result="failed"}'] == 0
    assert samples["eslbridge_upkeep_last_success_timestamp_seconds"] > 0
    assert samples["eslbridge_journal_max_bytes"] == 1073741824
    assert samples["eslbridge_journal_corrupt_records_total"] == 0  # counted by the journal at replay
