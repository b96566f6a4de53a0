"""How referrals leave: the refer stage that turns a case routing decided to refer into an
encrypted referral (``refer``), the referral document, PGP/MIME, the outbox and its
transports, and the watch on pinned keys."""
