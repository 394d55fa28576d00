"""Router config parsing and the router's pure decisions (noria_server.router_config)."""

from __future__ import annotations

import pytest
from noria_server.router_config import ConfigError, parse_config

GOOD = {"model": "churn", "namespace": "ml",
        "backends": [{"version": "churn-v6", "service": "churn-churn-v6", "port": 8080, "weight": 90, "url": None},
                     {"version": "churn-v7", "service": "churn-churn-v7", "port": 8080, "weight": 10, "url": None}],
        "shadow": {"version": "churn-v8", "service": "churn-churn-v8", "port": 8080, "mirrorPercent": 25,
                   "url": "http://127.0.0.1:9000/"}}


def test_contract_shape_parses() -> None:
    config = parse_config(GOOD)
    assert [b.version for b in config.backends] == ["churn-v6", "churn-v7"]
    assert config.total_weight == 100
    assert config.shadow is not None and config.shadow.url == "http://127.0.0.1:9000"
    assert config.shadow.mirror_percent == 25
    assert config.by_version("churn-v8") is config.shadow and config.by_version("nope") is None


def test_pick_splits_by_weight_exactly_on_a_uniform_grid() -> None:
    config = parse_config(GOOD)
    draws = [i / 10_000 for i in range(10_000)]
    picked = [config.pick(d).version for d in draws]
    assert picked.count("churn-v6") == 9_000 and picked.count("churn-v7") == 1_000
    assert sum(config.mirrors(d) for d in draws) == 2_500


def test_zero_weight_backend_is_never_picked() -> None:
    config = parse_config({**GOOD, "backends": [{**GOOD["backends"][0], "weight": 0},  # type: ignore[index]
                                                 {**GOOD["backends"][1], "weight": 5}]})  # type: ignore[index]
    assert {config.pick(i / 100).version for i in range(100)} == {"churn-v7"}


@pytest.mark.parametrize(("change", "message"), [
    ({"model": ""}, "model must be a non-empty string"),
    ({"backends": []}, "backends must be a non-empty list"),
    ({"backends": [{"version": "a", "service": "s", "weight": -1}]}, "backends[0].weight must be a non-negative"),
    ({"backends": [{"version": "a", "service": "s", "weight": 1.5}]}, "weight must be a non-negative integer"),
    ({"backends": [{"version": "a", "service": "s", "weight": 0}]}, "at least one weight must be positive"),
    ({"backends": [{"version": "a", "weight": 1}]}, "give a service name"),
    ({"backends": [{"version": "a", "url": "ftp://x", "weight": 1}]}, "url must be an http(s) URL"),
    ({"backends": [{"version": "a", "service": "s", "weight": 1, "port": 0}]}, "port must be a TCP port"),
    ({"backends": [{"version": "a", "service": "s", "weight": 1}, {"version": "a", "service": "t", "weight": 1}]},
     "version twice"),
    ({"shadow": {"version": "s", "service": "x", "mirrorPercent": 150}}, "mirrorPercent must be a number from 0"),
])
def test_bad_configs_name_the_field(change: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**GOOD, **change})
    assert message in str(err.value)
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_config(b"{")
