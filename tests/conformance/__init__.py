"""Twisted reactor conformance suite (see _builders.py)."""
