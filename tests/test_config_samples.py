"""The shipped samples agree with each other: conf/freeswitch/*, conf/eslbridge.yaml, systemd/."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from eslbridge.config import load_config

ROOT = Path(__file__).resolve().parents[1]
FS = ROOT / "conf" / "freeswitch"


@pytest.fixture
def sample():
    return load_config(str(ROOT / "conf" / "eslbridge.yaml"),
                       env={"ESLBRIDGE_ESL_PASSWORD_FS1": "x", "ESLBRIDGE_DIRECTORY_PASSWORD": "y"})


def params(path: Path, parent: str) -> dict[str, ET.Element]:
    return {p.get("name"): p for p in ET.parse(path).getroot().find(parent).iter("param")}


def test_event_socket_matches_the_node(sample) -> None:
    settings = params(FS / "event_socket.conf.xml", "settings")
    node = sample.freeswitch[0]
    assert settings["listen-ip"].get("value") == node.host == "127.0.0.1"
    assert int(settings["listen-port"].get("value")) == node.port
    assert settings["apply-inbound-acl"].get("value") == "loopback.auto"


def test_xml_curl_points_at_the_directory(sample) -> None:
    binding = params(FS / "xml_curl.conf.xml", "bindings")
    d = sample.directory
    url = binding["gateway-url"]
    assert url.get("value") == f"http://{d.listen}{d.path}" and url.get("bindings") == "directory"
    assert binding["gateway-credentials"].get("value").split(":")[0] == d.username
    assert binding["auth-scheme"].get("value") == "basic"
    # Above the directory server's own 10 s request deadline, so eslbridge fails closed first.
    assert int(binding["timeout"].get("value")) > 10


def test_dialplan_socket_matches_outbound_listen(sample) -> None:
    actions = ET.parse(FS / "dialplan" / "eslbridge_outbound.xml").getroot().iter("action")
    (socket_app,) = [a for a in actions if a.get("application") == "socket"]
    assert socket_app.get("data") == f"{sample.outbound.listen} async full"


def test_unit_credentials_use_the_names_the_config_reads() -> None:
    unit = (ROOT / "systemd" / "eslbridge.service").read_text().splitlines()
    creds = {line.split("=", 1)[1].split(":")[0] for line in unit if line.startswith("LoadCredential=")}
    assert creds == {"esl_password", "directory_password"}
    for required in ("Type=notify", "RestartPreventExitStatus=78", "StateDirectory=eslbridge", "User=eslbridge"):
        assert required in unit
