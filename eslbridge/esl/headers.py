"""The headers the daemon reads from an ESL event: intake decodes these and skips the rest.

A real 1.10 channel event carries ~150 headers (~7 KB) and the daemon reads about 70; building a
Python string for each of the others cost more than the correlator itself. What is stored is built from
these too: call records and CDRs from the legs' fields, ``call_events.event_data`` from leg UUIDs,
directions and causes (tests/test_esl_headers.py feeds the captured calls both ways and compares).
"""

from __future__ import annotations

from eslbridge.calls.legs import HEADERS as LEG_HEADERS

READ_HEADERS: frozenset[str] = frozenset((
    # Which call an event belongs to and in what order (eslbridge.calls.correlator); the metrics label.
    "Event-Name", "Event-Subclass", "Event-Sequence", "Event-Date-Timestamp",
    "Unique-ID", "Old-Unique-ID", "Other-Leg-Unique-ID", "Other-Type",
    "variable_originator", "variable_originating_leg_uuid", "variable_loopback_leg",
    "variable_other_loopback_leg_uuid",
    # Which FreeSWITCH process sent it (eslbridge.esl.nodemap).
    "Core-UUID", "FreeSWITCH-Hostname",
    # sofia::register logins (eslbridge.accounts.registrations).
    "username", "user_name", "realm", "domain_name", "expires",
    # Every record field: declared once, beside its slot, in eslbridge.calls.legs.
    *LEG_HEADERS,
))
