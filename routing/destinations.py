"""Where a routing decision sends a case: the configured destinations, by the protocol's names.

``[routing.destinations]`` names the police (``police``, ``police_international``) and
``[routing.hotlines]`` the partner hotlines by country; a decision names one as ``police`` or
``hotline:XX``. Each is an address and the key it is pinned to (never looked up by address).
``RoutingConfig.destinations()`` builds them from the configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Destination:
    email: str
    #: The pinned key: a full 40-hex-digit fingerprint.
    key: str
    #: Its referrals carry the verdict's ICCAM details (a reader of this release takes them).
    iccam_details: bool = False


@dataclass(frozen=True, slots=True)
class Destinations:
    #: ``police`` and ``police_international``, when configured.
    named: Mapping[str, Destination] = field(default_factory=dict)
    #: Partner hotlines by ISO country code.
    hotlines: Mapping[str, Destination] = field(default_factory=dict)

    def get(self, name: str) -> Destination | None:
        """The destination a decision names (``police``, ``hotline:XX``), if configured."""
        if name.startswith("hotline:"):
            return self.hotlines.get(name.partition(":")[2])
        return self.named.get(name)
