"""The emulator's private network (namespace.py), and the TLS it answers Google's names with
(tls.py)."""
