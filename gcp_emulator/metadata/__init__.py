"""The metadata server: the tree a guest reads, guest attributes, the relay a real VM reaches it
by."""
