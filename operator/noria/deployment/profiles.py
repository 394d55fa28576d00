"""The training profiles the drift checks compare with, read from the store once per URI.

A ModelVersion's ``spec.profileUri`` names the ``profile.json`` its trainer wrote next to the model;
a version is immutable, so a profile read once stays right and is cached (a few dozen, by URI). A
profile that cannot be read is ``None``: the drift check then says so in its detail and is
inconclusive, never a pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from noria.profile import Profile
from noria.settings import Settings

log = logging.getLogger(__name__)

CACHE_SIZE = 32
_cache: OrderedDict[str, Profile] = OrderedDict()


async def load(settings: Settings, uri: str | None) -> Profile | None:
    """The profile at ``uri`` (as written for pods; rewritten for this process by ``settings``)."""
    if not uri:
        return None
    if uri in _cache:
        _cache.move_to_end(uri)
        return _cache[uri]
    try:
        profile = await asyncio.to_thread(Profile.load, settings.local_uri(uri))
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cannot read drift profile %s: %s", uri, exc)
        return None
    _cache[uri] = profile
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return profile
