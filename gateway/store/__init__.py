"""Storage: the schema, the engine, migrations, the durable writer, the audit trail, the case
views and the domain's exception tree (``errors``).

This package imports none of ``intake``, ``routing`` or ``outbound``; they all use it.
"""
