"""A FreeSWITCH node's flow from ESL to the writer (see node.py)."""
