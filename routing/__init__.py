"""Where reports go: locating the host (DNS, GeoIP, overrides), the stage that does it for new
cases, INHOPE membership and the protocol table."""
