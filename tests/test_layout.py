"""The package layout follows the data flow (DESIGN sections 1 and 13): no module imports one
declared above it, so each stage can be read, tested and changed knowing only what lies below.

Imports are read from the source with ``ast`` (lazy imports inside functions count too): what
Python would load is what couples two modules, whether or not it runs at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import eslbridge

PACKAGE = Path(eslbridge.__file__).parent

# Bottom first. A module may import modules of its own layer or of layers below it. The most
# specific prefix decides a module's layer (``eslbridge.ops.metrics`` sits above ``eslbridge.ops``).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("eslbridge.errors", "eslbridge"),  # the package itself holds only __version__
    ("eslbridge.ops",),  # logging, progress, systemd, the settings reader, the accept gate
    ("eslbridge.config",),  # the config file, typed; read by every stage below the entry points
    ("eslbridge.keys",),  # OpenPGP, keyring, blind index, sealed values: what stored data is sealed with
    ("eslbridge.calls",),  # the pure correlator and its record types
    ("eslbridge.esl",),  # intake: reads the headers the correlator needs, hands it events
    ("eslbridge.store",),  # record queue, journal, writer, LISTEN/NOTIFY, resync against the rows
    ("eslbridge.accounts",),  # users, roles, registrations, the call authorizer, audit
    ("eslbridge.privacy", "eslbridge.directory"),  # key rotation, GDPR, retention; digest lookups
    ("eslbridge.ops.metrics",),  # reads every stage's counters
    ("eslbridge.flow",),  # a node's flow: ESL consumer -> correlator -> writer, resync, live-call cap
    ("eslbridge.daemon",),  # the composition root
    ("eslbridge.sim", "eslbridge.demo"),  # the FreeSWITCH simulator, a throwaway PostgreSQL, the demo
    ("eslbridge.commands",),
    ("eslbridge.cli", "eslbridge.__main__"),
)


def _layer(module: str) -> int:
    best, rank = "", -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, i
    assert rank >= 0, f"{module} is in no declared layer: add it to LAYERS"
    return rank


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import mod`` imports the module pkg.mod when it exists.
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if _exists(sub) else base)
    return {name for name in found if name == "eslbridge" or name.startswith("eslbridge.")}


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _modules() -> list[tuple[Path, str]]:
    return [(p, _module_name(p)) for p in sorted(PACKAGE.rglob("*.py"))]


def test_every_module_is_in_a_layer() -> None:
    for _, module in _modules():
        _layer(module)


def test_no_module_imports_a_module_above_it() -> None:
    upward = []
    for path, module in _modules():
        for target in sorted(_imports(path, module)):
            if _layer(target) > _layer(module):
                upward.append(f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})")
    assert not upward, "\n".join(upward)


def test_the_top_level_holds_only_entry_points() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "__main__", "cli", "config", "daemon", "demo", "errors"]


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The detector itself: a store module importing the daemon, absolutely or relatively, is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("from eslbridge.daemon import Daemon\nfrom . import journal\nfrom ..ops import logs\n")
    found = _imports(probe, "eslbridge.store.probe")
    assert found == {"eslbridge.daemon", "eslbridge.store.journal", "eslbridge.ops.logs"}
    assert _layer("eslbridge.daemon") > _layer("eslbridge.store.probe") > _layer("eslbridge.ops.logs")
