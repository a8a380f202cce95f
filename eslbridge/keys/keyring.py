"""The keyring: numbered encryption keys, the active one, the blind-index key (DESIGN section 8).

File format (YAML, mode 0600, paths relative to the keyring file)::

    active: 2
    keys:
      1: {passphrase_file: keys/1.key}    # the file's content, stripped, is the passphrase
      2: {passphrase_file: keys/2.key}
    blind_index_key_file: keys/blind.key

The keyring file and every key file must grant no permission to group or others; anything
else is refused with a ``ConfigError`` naming the file (never its content). A ``Keyring``
is immutable: a reload (SIGHUP, rotation) loads a new one, so ``active_id`` read once is the
key every ``encrypt`` call of that object uses.

Secrets never leave this object except through ``passphrase()``, which exists only to pass
the passphrase to ``pgp_sym_decrypt`` as a query parameter (GDPR export): callers must never
log it, put it in an error message or interpolate it into SQL text.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from eslbridge.errors import ConfigError
from eslbridge.keys import blindindex
from eslbridge.keys.openpgp import DecryptionError, MessageKey, Sealer
from eslbridge.ops.settings import Context, Field, Section, file_path, parse_yaml, read_secret


class KeyringFile(NamedTuple):
    """What a keyring file says, validated; paths resolved against its directory."""

    active: int
    files: dict[int, Path]  # key id -> its passphrase file
    blind_file: Path


def _parse(path: Path) -> KeyringFile:
    root = Section(Context(path, {}), "", parse_yaml(path, read_secret(path), "keyring"))
    files = root.take("keys", _key_files)
    active = root.take("active", _active_of(files))
    blind_file = root.take("blind_index_key_file", file_path)
    root.finish()
    return KeyringFile(active, files, blind_file)


def _key_files(f: Field, keys: Any) -> dict[int, Path]:
    if not isinstance(keys, dict) or not keys:
        raise f.error("'keys' must map key ids to {passphrase_file: path}")
    files = {}
    for key_id, entry in keys.items():
        if not isinstance(key_id, int) or isinstance(key_id, bool) or not 0 < key_id < 2**15:
            raise f.error(f"key id {key_id!r} is not an integer between 1 and 32767")
        if not isinstance(entry, dict) or set(entry) != {"passphrase_file"}:
            raise f.error(f"key {key_id} must be {{passphrase_file: path}}")
        files[key_id] = Section(f.ctx, f"keys.{key_id}", entry).take("passphrase_file", file_path)
    return files


def _active_of(files: Mapping[int, Path]) -> Callable[[Field, Any], int]:
    def conv(f: Field, active: Any) -> int:
        if active not in files or isinstance(active, bool):
            raise f.error(f"active key {active!r} is not in 'keys'")
        return active

    return conv


class Keyring:
    """Loaded keys. Use ``Keyring.load``; thread- and greenlet-safe (immutable)."""

    def __init__(self, path: Path, active_id: int, keys: Mapping[int, MessageKey], passphrases: Mapping[int, bytes],
                 blind_key: bytes):
        self.path = path
        self.active_id = active_id
        self._keys = dict(keys)
        self._passphrases = dict(passphrases)
        self._blind_key = blind_key

    def __repr__(self) -> str:
        return f"<Keyring {self.path} active={self.active_id} keys={self.key_ids}>"

    @classmethod
    def load(cls, path: str | os.PathLike) -> Keyring:
        """Read and check the keyring file and every key file it names; raises ConfigError."""
        path = Path(path)
        active, files, blind_file = _parse(path)
        passphrases = {key_id: read_secret(f) for key_id, f in files.items()}
        for key_id, passphrase in passphrases.items():
            try:
                passphrase.decode("utf-8")  # pgp_sym_decrypt takes it as text
            except UnicodeDecodeError:
                raise ConfigError(f"{files[key_id]}: passphrase is not UTF-8 text") from None
        keys = {key_id: MessageKey(p) for key_id, p in passphrases.items()}
        return cls(path, active, keys, passphrases, read_secret(blind_file))

    @property
    def key_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._keys))

    def encrypt(self, plaintext: str, key_id: int | None = None) -> bytes:
        """An OpenPGP message of ``plaintext`` under ``key_id`` (default: ``active_id``)."""
        return self._key(self.active_id if key_id is None else key_id).encrypt(plaintext.encode("utf-8"))

    def decrypt(self, blob: bytes, key_id: int | None = None) -> str:
        """The text of an OpenPGP message; without ``key_id``, every key is tried.

        Raises ``DecryptionError`` (wrong key, tampered, not OpenPGP) or ``ConfigError``
        (unknown ``key_id``).
        """
        if key_id is not None:
            data = self._key(key_id).decrypt(blob)
        else:
            # Our messages carry their key's fixed S2K salt: try that key first.
            keys = sorted(self._keys.values(), key=lambda k: not k.wrote(blob))
            for key in keys:
                try:
                    data = key.decrypt(blob)
                    break
                except DecryptionError as e:
                    error = e
            else:
                raise DecryptionError(f"no key in the keyring decrypts this message ({error})")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError("decrypted data is not UTF-8 text") from None

    def passphrase(self, key_id: int) -> str:
        """The passphrase of ``key_id``, for ``pgp_sym_decrypt`` in SQL. Never log it."""
        self._key(key_id)
        return self._passphrases[key_id].decode("utf-8")

    def journal_sealer(self) -> Sealer:
        """Seals journal payloads with the active key; opens those of any key in this keyring."""
        return Sealer(self._passphrases, self.active_id)

    def blind_index(self, kind: str, value: str) -> bytes:
        """HMAC-SHA256 of the normalised value (kinds and rules: ``eslbridge.keys.blindindex``)."""
        return blindindex.blind_index(self._blind_key, kind, value)

    def _key(self, key_id: int) -> MessageKey:
        try:
            return self._keys[key_id]
        except KeyError:
            raise ConfigError(f"{self.path}: no key with id {key_id!r} in the keyring") from None


# --- generation and rotation primitives (the `keys` CLI builds on these) ---------------------


def _new_secret() -> bytes:
    return base64.b64encode(os.urandom(32)) + b"\n"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_private(path: Path, content: bytes) -> None:
    """Create ``path`` with mode 0600 and ``content``; refuse to overwrite anything."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path}: already exists; refusing to overwrite it") from None
    try:
        os.fchmod(fd, 0o600)  # the umask can only remove bits, but be explicit
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_keyring(path: Path, active: int, files: Mapping[int, str], blind_file: str) -> None:
    """Atomically replace the keyring file (temp file, fsync, rename)."""
    doc = {"active": active, "keys": {k: {"passphrase_file": f} for k, f in sorted(files.items())},
           "blind_index_key_file": blind_file}
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    _create_private(tmp, yaml.safe_dump(doc, default_flow_style=False, sort_keys=False).encode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def generate_keyring(path: str | os.PathLike) -> None:
    """Create a keyring with key 1 active and a blind-index key; refuse if one exists.

    Layout: ``<dir>/keyring.yaml`` (the given path), ``<dir>/keys/1.key``, ``<dir>/keys/blind.key``,
    each holding 32 random bytes in base64; directories 0700, files 0600. The keyring file is
    written last, so its presence means the set is complete.
    """
    path = Path(path)
    if path.exists():
        raise ConfigError(f"{path}: keyring already exists; refusing to overwrite it")
    keys_dir = path.parent / "keys"
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _create_private(keys_dir / "1.key", _new_secret())
    _create_private(keys_dir / "blind.key", _new_secret())
    _fsync_dir(keys_dir)
    _write_keyring(path, 1, {1: "keys/1.key"}, "keys/blind.key")


def _current(path: Path) -> tuple[int, dict[int, str], str]:
    Keyring.load(path)  # every file must be valid before we change anything
    active, files, blind_file = _parse(path)
    base = path.parent
    return active, {k: _relative(f, base) for k, f in files.items()}, _relative(blind_file, base)


def add_key(path: str | os.PathLike) -> int:
    """Add a new random key (not active) next to the keyring; returns its id."""
    path = Path(path)
    active, files, blind_file = _current(path)
    new_id = max(files) + 1
    key_file = path.parent / "keys" / f"{new_id}.key"
    key_file.parent.mkdir(mode=0o700, exist_ok=True)
    _create_private(key_file, _new_secret())
    _fsync_dir(key_file.parent)
    files[new_id] = _relative(key_file, path.parent)
    _write_keyring(path, active, files, blind_file)
    return new_id


def set_active(path: str | os.PathLike, key_id: int) -> None:
    """Make ``key_id`` the key new data is encrypted with."""
    path = Path(path)
    _, files, blind_file = _current(path)
    if key_id not in files:
        raise ConfigError(f"{path}: no key with id {key_id!r} in the keyring")
    _write_keyring(path, key_id, files, blind_file)


def remove_key(path: str | os.PathLike, key_id: int) -> Path:
    """Drop ``key_id`` from the keyring (never the active one); returns its key file, which stays on
    disk: backups taken before a rotation need it. Callers check first that no row uses the key."""
    path = Path(path)
    active, files, blind_file = _current(path)
    if key_id not in files:
        raise ConfigError(f"{path}: no key with id {key_id} in the keyring")
    if key_id == active:
        raise ConfigError(f"{path}: key {key_id} is the active key; make another key active first")
    key_file = path.parent / files.pop(key_id)
    _write_keyring(path, active, files, blind_file)
    return key_file
