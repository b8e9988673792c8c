"""The tamper-evident audit chain, as a pure core: no I/O.

The audit service feeds events in and writes the records out; exports are verified by
streaming them back through :func:`keyturn.core.audit.verify.verify`. One module per seam:

* :mod:`.record`: the record model (``AuditRecord``, ``Checkpoint``) and reading it from a dict;
* :mod:`.canonical`: the canonical encoding a record's hash is computed over, and record ids;
* :mod:`.checkpoint`: Ed25519 signing and checking of checkpoints;
* :mod:`.dedupe`: the window of recently recorded event ids;
* :mod:`.chain`: the writer that turns events into chained records;
* :mod:`.verify`: verification of a stream of records, in one pass.
"""
