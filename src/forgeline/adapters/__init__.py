"""Adapters: ports implemented over real programs, databases and HTTP services."""
