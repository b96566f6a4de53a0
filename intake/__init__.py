"""How reports get in: SMTP now; the web form, MIME parsing and dedup follow."""
