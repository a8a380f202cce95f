"""mod_xml_curl directory service: FreeSWITCH's SIP digest lookups answered from the users table."""

from eslbridge.directory.service import DirectoryService

__all__ = ["DirectoryService"]
