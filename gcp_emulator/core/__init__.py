"""The emulator's plumbing: the HTTP front (app.py), routing (routing.py), errors in each API's
shape (errors.py), the shared state (state.py), small helpers (util.py, crc32c.py)."""
