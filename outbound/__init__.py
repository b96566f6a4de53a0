"""How referrals leave: the referral document, PGP/MIME, the outbox and its transports."""
