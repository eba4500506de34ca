"""Utilities every layer may use: the one command runner, git, the cache lock, the YAML reader, progress lines,
untrusted text and safe file reads.
"""
