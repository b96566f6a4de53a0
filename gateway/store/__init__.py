"""Storage: the schema, the engine, migrations and the durable writer.

This package imports none of ``intake``, ``routing`` or ``outbound``, nor the rest of
``gateway``; they all use it. Ids (``ids``) and durable files (``files``) live here too.
"""
