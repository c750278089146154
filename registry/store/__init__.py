"""Content-addressed blob storage: ``BlobStore`` (``blobs``), the lossless
byte-plane codec (``codec``, ``_planes``, ``_zstd_literals``), and file-system
helpers: atomic folder publishing (``atomic``) and temp-file ownership (``leases``)."""
