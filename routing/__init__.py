"""Where reports go: locating the host (DNS, GeoIP, overrides), the stage that does it for new
cases, INHOPE membership, the protocol table, and the decision on a case (``decide``: claim,
read its facts, apply the table, store the decision)."""
