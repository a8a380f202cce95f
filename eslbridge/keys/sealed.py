"""Personal data inside a JSON document (``call_events.event_data``), sealed as one OpenPGP message.

A JSON value cannot hold bytes, and personal values must not sit in it as text (DESIGN section 8).
So they go, as one JSON object, into a single OpenPGP message (the format of the call tables'
encrypted columns), stored base64 under ``personal`` beside the ``enc_key_id`` of the key that
wrote it. PostgreSQL opens it with
``pgp_sym_decrypt(decode(event_data->>'personal', 'base64'), passphrase)::jsonb``, gpg after
``base64 -d``; ``eslbridge keys rotate`` re-seals it under the active key like an encrypted column.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from eslbridge.keys.keyring import Keyring

FIELD = "personal"
KEY_FIELD = "enc_key_id"


def seal(keyring: Keyring, values: Mapping[str, str]) -> dict[str, Any]:
    """The two JSON members that carry ``values`` under the keyring's active key."""
    blob = keyring.encrypt(json.dumps(dict(values), sort_keys=True))
    return {FIELD: base64.b64encode(blob).decode("ascii"), KEY_FIELD: keyring.active_id}


def unseal(keyring: Keyring, document: Mapping[str, Any]) -> dict[str, str]:
    """The values sealed in ``document`` (raises ``DecryptionError`` or ``ConfigError`` like ``Keyring.decrypt``)."""
    return json.loads(keyring.decrypt(base64.b64decode(document[FIELD]), int(document[KEY_FIELD])))
