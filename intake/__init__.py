"""How reports get in: the SMTP door and the web form (and its JSON API), each storing what it
received durably before it answers; then, off the request path, MIME parsing, URL extraction
and canonicalisation, and filing each report into a case (``normalise``)."""
