"""The SQL catalog: engine and sessions (``db``), ORM rows (``models``), queries
(``queries``), the frozen records the API returns (``records``) and the
``Catalog`` service (checkpoints and families). Schema changes live in the
top-level ``migrations/`` (Alembic), never here."""
