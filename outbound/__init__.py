"""How referrals leave: routing a decided case (``refer``), the referral document, PGP/MIME,
the outbox and its transports, and the watch on pinned keys."""
