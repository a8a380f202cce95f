"""eslbridge: FreeSWITCH ESL events to encrypted CDRs in PostgreSQL, plus mod_xml_curl directory lookups."""

__version__ = "0.1.0"
