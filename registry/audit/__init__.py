"""The audit trail: the hash chain (``chain``), Ed25519 signing (``signing``),
and ``verify`` / ``gc`` / ``identify`` over catalog, store and chain (``integrity``)."""
