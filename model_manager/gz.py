"""gzip for everything the service compresses: payload blobs, big JSON answers, the docs' assets.

libdeflate (the `deflate` package) compresses a whole buffer at once, which is all the service ever
does, faster and smaller than a streaming deflate at the same level. A 1.8 MB XGBoost model at level
6: 20-21 ms and 24.0 % of its size, against 22-28 ms and 25.5 % with zlib-ng and 58-68 ms and 25.5 %
with zlib (the same machine at different hours); a 130 KB model: 1.3 against 1.6 and 3.9 ms. It releases the GIL while it works, so two
workers' threads compress at once. The output is ordinary gzip (no timestamp, so the same bytes
always compress the same) that any client inflates; it differs byte for byte from zlib's, which
matters only to `gzip_both` below. Decompressing stays with the standard library: it is rare, and
its errors are the ones callers catch."""
from __future__ import annotations

import deflate

LEVEL = 6  # payloads and answers alike


def gzip_bytes(data: bytes | bytearray | memoryview, level: int = LEVEL) -> bytes:
    """`data` as a gzip member with no timestamp, so the same bytes always compress the same."""
    return bytes(deflate.gzip_compress(data, level))


def gzip_both(data: bytes, level: int = LEVEL) -> tuple[bytes, bytes]:
    """`data` compressed as this release does and as the first releases did (the standard
    library's zlib), for rebuilding a blob whose name is the sha256 of one of them."""
    import gzip

    return gzip_bytes(data, level), gzip.compress(data, level, mtime=0)
