"""eslbridge: FreeSWITCH ESL events to encrypted CDRs in PostgreSQL, plus mod_xml_curl directory lookups."""

# The version, read by setup.cfg, `eslbridge --version` and tools/build-deb (the Debian version).
__version__ = "0.1.0"
