"""The router's configuration and its pure decisions: which version answers a request, whether to
mirror it. How a shadow's answer compares with the primary's is a matter of the protocol
(``noria_server.oip.predictions_of`` / ``compare``).

The config itself (its JSON shape, parsing and checks) is typed once in ``noria.router_config``,
which the operator writes with; it is re-exported here. This module adds what only the router needs.
"""

from __future__ import annotations

from noria.router_config import Backend, ConfigError, RouterConfig, parse_config

__all__ = ["Backend", "ConfigError", "RouterConfig", "parse_config"]
