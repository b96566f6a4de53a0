"""SIGHUP: what of a new config ``serve`` applies while serving, and what needs a restart."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway import logs
from gateway.compose import (
    follow_up_settings,
    partner_keys,
    partner_outcome_settings,
    pinned_keys,
    reply_keys,
)
from gateway.config import Config
from outbound.follow_up import FollowUpSettings
from outbound.partner_referrals import PartnerReferrals
from routing.locate import Overrides
from routing.protocol import MembershipList

if TYPE_CHECKING:
    from gateway.app import Gateway


def reload(gateway: Gateway, new: Config, *, follow_up: FollowUpSettings | None = None
           ) -> list[str]:
    """Apply what can change while serving (routing destinations and their deadlines,
    membership, keys, locate overrides and CDNs, the log level), without closing any
    connection; the sections that differ but need a restart, by name."""
    old = gateway.config
    logs.configure(new.gateway.log_level, new.gateway.log_format)
    gateway.refer.reconfigure(new.refer_settings(), MembershipList.shipped(new.routing.membership,
                                                          new.routing.hotlines))
    gateway.locator.reconfigure(Overrides(new.locate.override), new.locate.cdn_asns)
    if gateway.recheck is not None:
        gateway.recheck.reconfigure(MembershipList.shipped(new.routing.membership,
                                                           new.routing.hotlines),
                                    new.routing.hotlines)
    gateway.keywatch.reconfigure(pinned_keys(new), new.gpg.warn_days)
    if gateway.replies is not None:
        gateway.replies.reconfigure(reply_keys(new))
    gateway.follow_up.reconfigure(follow_up or follow_up_settings(new))
    if gateway.partner_outcomes is not None:
        gateway.partner_outcomes.reconfigure(partner_outcome_settings(new))
    if gateway.normaliser.read_referral is not None:  # partners' keys for their referrals
        gateway.normaliser.read_referral = PartnerReferrals(
            gateway.gpg, partner_keys(new), home=new.gateway.home_country)
    gateway.gpg.forget_checks()  # keys may have been imported or revoked
    gateway.config = new
    needs_restart = [name for name in ("database", "smtp", "http", "console", "admin",
                                       "intake", "assessment", "retention", "outbound")
                     if getattr(old, name) != getattr(new, name)]
    needs_restart += [f"locate.{key}" for key in ("nameservers", "timeout", "geoip_db",
                                                  "asn_db", "concurrency", "retry_after",
                                                  "retry_max", "max_attempts",
                                                  "recheck_every")
                      if getattr(old.locate, key) != getattr(new.locate, key)]
    needs_restart += [f"gateway.{key}" for key in ("home_country", "data_dir",
                                                   "reference_prefix", "shutdown_grace",
                                                   "parts", "stage_lease")
                      if getattr(old.gateway, key) != getattr(new.gateway, key)]
    if old.gpg.home != new.gpg.home or old.gpg.passphrase_file != new.gpg.passphrase_file:
        needs_restart.append("gpg.home/passphrase_file")
    return needs_restart
