"""Storage: the schema, the engine, migrations and the durable writer.

This package imports none of ``intake``, ``routing`` or ``outbound``; they all use it.
"""
