"""Give the memory-BIO buffers of idle connections back to the allocator (see native.BioReleaser).

OpenSSL's memory BIOs (`ssl.MemoryBIO`) never shrink: a `BUF_MEM` keeps the largest size it was
ever grown to (plus a third), so a connection keeps, for its whole life, room for the largest
slice of ciphertext it was fed, the largest record it sent and its handshake flight: ≈10 KiB
per connection after API-sized traffic, ≈45 KiB after bulk. The relay releases an idle
connection's empty BIOs through `bio_releaser()`, which is None where the layout check fails:
then buffers are simply kept, as plain CPython does.

The implementation lives in native.py with the other reaches past Python's API; this name stays
for the relay's import until it takes it from native directly.
"""

from __future__ import annotations

from fopproxy.native import BioReleaser, bio_releaser

__all__ = ["BioReleaser", "bio_releaser"]
