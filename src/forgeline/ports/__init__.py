"""Ports: the operation-shaped interfaces that services depend on and adapters implement.

Import each port from its own module (``forgeline.ports.queue`` …); this package
re-exports nothing, so adding a port never touches a shared file.
"""
