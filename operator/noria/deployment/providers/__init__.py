"""Traffic providers behind one protocol (``base.TrafficProvider``); ``make_provider`` picks by spec."""

from __future__ import annotations

from noria.deployment.objects import RolloutRef
from noria.deployment.providers.base import TrafficProvider, TrafficProviderError
from noria.deployment.spec import RolloutSpec
from noria.settings import Settings


def make_provider(ref: RolloutRef, spec: RolloutSpec, model: str, settings: Settings) -> TrafficProvider:
    if spec.provider == "router":
        from noria.deployment.providers.router import RouterProvider

        return RouterProvider(ref, model, settings, spec.feedback_token)
    if spec.provider == "gatewayAPI":
        from noria.deployment.providers.gateway_api import GatewayAPIProvider

        assert spec.http_route
        return GatewayAPIProvider(ref, spec.http_route)
    if spec.provider == "service":
        from noria.deployment.providers.service import ServiceProvider

        return ServiceProvider(ref)
    raise TrafficProviderError(f"unknown traffic provider {spec.provider!r}")


__all__ = ["TrafficProvider", "TrafficProviderError", "make_provider"]
