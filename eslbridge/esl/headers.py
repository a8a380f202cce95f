"""The headers the daemon reads from an ESL event: intake decodes these and skips the rest.

A real 1.10 channel event carries ~150 headers (~7 KB) and the daemon reads about 70; building a
Python string for each of the others cost more than the correlator itself. What is stored is built from
these too: call records and CDRs from the legs' fields, ``call_events.event_data`` from leg UUIDs,
directions and causes (tests/test_esl_headers.py feeds the captured calls both ways and compares).

A channel event is decoded with only what the correlator reads from its name (EVENT_HEADERS: a leg's
fields come from the events eslbridge.calls.legs declares beside each); any other event, or one whose
name cannot be told, with READ_HEADERS, all of them.
"""

from __future__ import annotations

from eslbridge.calls.legs import CHANNEL_EVENTS
from eslbridge.calls.legs import HEADERS as LEG_HEADERS

# Read from every event: which call it belongs to and in what order (eslbridge.calls.correlator), which
# FreeSWITCH process sent it (eslbridge.esl.nodemap), the metrics label.
EVERY_EVENT: frozenset[str] = frozenset((
    "Event-Name", "Event-Subclass", "Event-Sequence", "Event-Date-Timestamp",
    "Unique-ID", "Old-Unique-ID", "Other-Leg-Unique-ID", "Other-Type",
    "variable_originator", "variable_originating_leg_uuid", "variable_loopback_leg",
    "variable_other_loopback_leg_uuid",
    "Core-UUID", "FreeSWITCH-Hostname",
))

READ_HEADERS: frozenset[str] = frozenset((
    *EVERY_EVENT,
    # sofia::register logins (eslbridge.accounts.registrations).
    "username", "user_name", "realm", "domain_name", "expires",
    # Every record field: declared once, beside its slot, in eslbridge.calls.legs.
    *LEG_HEADERS,
))

# Channel event name -> the headers read from it.
EVENT_HEADERS: dict[str, frozenset[str]] = {
    name: EVERY_EVENT | {header for header, events in LEG_HEADERS.items() if name in events}
    for name in CHANNEL_EVENTS
}
