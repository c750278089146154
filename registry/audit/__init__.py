"""The audit trail: the hash chain (``chain``), Ed25519 signing (``signing``), the
``AuditLog`` service (``log``), and the ``Integrity`` service: ``verify`` / ``gc`` /
``identify`` over catalog, store and chain (``integrity``)."""
