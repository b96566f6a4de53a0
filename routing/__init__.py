"""Where reports go: locating the host, INHOPE membership and the protocol table."""
