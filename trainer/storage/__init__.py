"""Object storage by URI scheme: the `Store` protocol and its registry of lazily imported backends (`base.py`), the
gs:// backend (`gcs.py`), the bucket's health as one warning and one recovery line (`health.py`), and crc32c
checksums (`checksums.py`). A new backend is one module plus one line in `base.BACKENDS`.

May import: `trainer.errors` only. Nothing here knows about checkpoints or runs.
"""
