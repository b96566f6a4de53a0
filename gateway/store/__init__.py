"""Storage: the schema, the engine, migrations, the durable writer, the audit trail, the case
views and the domain's exception tree (``errors``).

This package imports none of ``intake``, ``routing`` or ``outbound``, nor the rest of
``gateway``; they all use it. Ids (``ids``) and durable files (``files``) live here too.
"""
