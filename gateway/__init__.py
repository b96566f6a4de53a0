"""hotline-gateway: the daemon, its configuration, storage and lifecycle."""
