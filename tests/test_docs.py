"""The operator documentation stays true to the repository: links, quick start, every setting."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from eslbridge.demo import installed_docs

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)|<(https?://[^>]+)>|(https?://\S+)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)  # commands and config samples name addresses, not links


def test_no_link_leaves_the_repository() -> None:
    checked = 0
    for page in PAGES:
        for m in LINK.finditer(CODE.sub("", page.read_text())):
            target = m.group(1) or m.group(2) or m.group(3)
            assert "://" not in target and not target.startswith(("/", "mailto:")), f"{page.name}: {target}"
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), f"{page.name}: {target} is not in the repository"
            checked += 1
    assert checked >= 15


def test_readme_keeps_the_two_quick_start_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "```sh\npip install . && eslbridge demo\n```" in readme
    assert "```sh\npip install -e '.[test]' && python -m pytest -q\n```" in readme
    assert "(docs/architecture.svg)" in readme and "python -m pytest -q tests/freeswitch" in readme


def sample_keys(node: object, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        return {k for key, value in node.items() for k in sample_keys(value, f"{prefix}{key}.")} or {prefix[:-1]}
    if isinstance(node, list) and node and isinstance(node[0], dict):
        return sample_keys(node[0], f"{prefix[:-1]}[].")
    return {prefix[:-1]}


def test_the_configuration_reference_names_every_setting_of_the_sample() -> None:
    text = (ROOT / "conf" / "eslbridge.yaml").read_text()
    # the sample's commented-out optional keys count too
    sample = yaml.safe_load(re.sub(r"^(\s*)# (password_file: )", r"\1\2", text, flags=re.M))
    keys = sample_keys(sample)
    assert {"freeswitch[].password_file", "database.password_file", "logging.format"} <= keys
    reference = (ROOT / "docs" / "CONFIGURATION.md").read_text()
    assert sorted(k for k in keys if f"`{k}`" not in reference) == []


def test_the_demo_points_at_documentation_this_copy_has() -> None:
    docs = installed_docs()
    assert (docs / "README.md").is_file() and (docs / "docs" / "DEPLOYMENT.md").is_file()
    examples = docs / "examples" if (docs / "examples").is_dir() else docs / "conf"
    assert (examples / "freeswitch" / "xml_curl.conf.xml").is_file()
