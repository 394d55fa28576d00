"""Feast's online store in the test bed (issue 18 item 4): Debian's redis-server (noria_testbed.redis),
the example repository applied and materialized into it, and Feast's HTTP feature server
(``feast serve``, noria_testbed.feast_server) answering ``/get-online-features`` from it: the newest
materialized values for known keys, what an unknown key gets, what a dead store gets, and answers
again once the store is back. These are the answers the model server's online lookup parses
(docs/training-feast.md, "Online store in the test bed")."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from feast_helpers import apply_repository, feast_python
from unavailable import unavailable

pytestmark = pytest.mark.integration

FEATURES = ["tenure_months", "monthly_charges", "support_calls"]
EPOCH = "1970-01-01T00:00:00Z"
NOW = pd.Timestamp.now(tz="UTC").floor("s")
# A customer with two recent snapshots: the online store must hold the newer one.
RECENT = pd.DataFrame(
    [
        (9001, NOW - pd.Timedelta(days=10), 5, 30.0, 0),
        (9001, NOW - pd.Timedelta(days=1), 6, 31.5, 2),
    ],
    columns=["customer_id", "event_timestamp", *FEATURES],
)
UNKNOWN = 123456  # never in the feature source


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory):
    from noria_testbed.binaries import RedisUnavailable
    from noria_testbed.redis import RedisServer

    workdir = tmp_path_factory.mktemp("redis")
    try:
        # persist: the store killed below comes back with what was materialized into it.
        server = RedisServer.with_password(workdir=workdir / "data", log_path=workdir / "redis.log",
                                           persist=True)
    except RedisUnavailable as error:
        unavailable(str(error))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def repository(redis, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example applied (feast_helpers) and materialized into Redis with feature_store.redis.yaml."""
    from noria_testbed.feast_server import materialize

    feast_python()
    folder = apply_repository(tmp_path_factory.mktemp("feast") / "feast-churn", extra_stats=RECENT, customers=50)
    started = time.monotonic()
    materialize(folder, datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(minutes=1),
                redis_connection=redis.feast_connection_string())
    print(f"feast materialize: {time.monotonic() - started:.1f}s")
    return folder


@pytest.fixture(scope="module")
def feature_server(redis, repository: Path, tmp_path_factory: pytest.TempPathFactory):
    from noria_testbed.feast_server import FeastFeatureServer

    server = FeastFeatureServer(repository=repository, redis_connection=redis.feast_connection_string(),
                                log_path=tmp_path_factory.mktemp("feast-serve") / "feast-serve.log")
    started = time.monotonic()
    server.start()
    print(f"feast serve ready: {time.monotonic() - started:.1f}s")
    yield server
    server.stop()


def newest(repository: Path) -> pd.DataFrame:
    """The newest row of each customer in the feature source: what materialize must have stored."""
    stats = pd.read_parquet(repository / "data" / "customer_stats.parquet")
    return stats.sort_values("event_timestamp").groupby("customer_id").tail(1).set_index("customer_id")


def columns(answer: dict) -> dict[str, dict]:
    """Feast's column-major answer by feature name."""
    return dict(zip(answer["metadata"]["feature_names"], answer["results"], strict=True))


def test_redis_answers_on_loopback_with_its_password_only(redis) -> None:
    from noria_testbed.redis import RedisError, call

    assert redis.call("PING") == "PONG"
    assert redis.call("SET", "noria:smoke", "v1") == "OK"
    assert redis.call("GET", "noria:smoke") == b"v1"
    assert redis.call("CONFIG", "GET", "bind") == [b"bind", b"127.0.0.1"]
    with pytest.raises(RedisError, match="NOAUTH"):
        call(redis.port, "GET", "noria:smoke")
    with pytest.raises(RedisError, match="WRONGPASS"):
        call(redis.port, "GET", "noria:smoke", password="not-it")
    assert redis.call("DEL", "noria:smoke") == 1


def test_known_keys_get_the_newest_materialized_values(feature_server, repository: Path) -> None:
    expected = newest(repository)
    keys = [9001, 0, 1, 49]
    status, answer = feature_server.get_online_features({"customer_id": keys}, feature_service="churn_v1")
    assert status == 200, answer
    # The entity key first, then the service's features in an order that changes from one feature
    # server process to the next (Feast groups a view's features in a set): read them by name.
    names = answer["metadata"]["feature_names"]
    assert names[0] == "customer_id" and sorted(names[1:]) == sorted(FEATURES), names
    got = columns(answer)
    assert got["customer_id"]["values"] == keys
    for name in FEATURES:
        assert got[name]["values"] == [expected.loc[k, name].item() for k in keys], name
        assert got[name]["statuses"] == ["PRESENT"] * len(keys)
        assert got[name]["event_timestamps"] == [
            expected.loc[k, "event_timestamp"].strftime("%Y-%m-%dT%H:%M:%SZ") for k in keys
        ]
    assert [got[name]["values"][0] for name in FEATURES] == [6, 31.5, 2]  # 9001's newer snapshot

    # A list of feature references instead of the service: those columns only (again in any order).
    status, answer = feature_server.get_online_features(
        {"customer_id": [9001]}, features=["customer_stats:support_calls", "customer_stats:tenure_months"]
    )
    assert status == 200, answer
    assert {name: column["values"] for name, column in columns(answer).items()} == {
        "customer_id": [9001], "support_calls": [2], "tenure_months": [6]
    }


def test_an_unknown_key_gets_nulls_with_the_epoch_as_its_time(feature_server) -> None:
    # Feast 0.67's Redis store does not say NOT_FOUND: an unknown key is PRESENT with a null value and
    # event time 0 (its online_read gives empty values, not None). A lookup client must read "null at
    # the epoch" as not found; this test fails when Feast changes that.
    status, answer = feature_server.get_online_features({"customer_id": [9001, UNKNOWN]},
                                                        feature_service="churn_v1")
    assert status == 200, answer
    got = columns(answer)
    assert got["customer_id"]["values"] == [9001, UNKNOWN]
    for name in FEATURES:
        assert got[name]["values"][1] is None
        assert got[name]["event_timestamps"][1] == EPOCH
        assert got[name]["statuses"] == ["PRESENT", "PRESENT"]
        assert got[name]["values"][0] is not None and got[name]["event_timestamps"][0] != EPOCH


def test_a_dead_store_is_a_500_naming_the_refused_connection_and_the_store_back_answers_again(
    feature_server, redis
) -> None:
    body = {"customer_id": [9001]}
    status, before = feature_server.get_online_features(body, feature_service="churn_v1")
    assert status == 200

    redis.kill()
    started = time.monotonic()
    status, answer = feature_server.get_online_features(body, feature_service="churn_v1", timeout=60)
    took = time.monotonic() - started
    # Feast answers the exception's text as a JSON string, after redis-py's own retries with back-off
    # (seconds: a lookup client's timeout fires first).
    assert status == 500, answer
    assert answer == f"Error 111 connecting to {redis.address}. Connection refused.", answer
    print(f"the answer with Redis down took {took:.2f}s")
    # /health reads only the registry: it does not see the store down.
    assert feature_server.request("GET", "/health")[0] == 200

    redis.start()  # same port, the append-only file read back
    status, after = feature_server.get_online_features(body, feature_service="churn_v1")
    assert status == 200, after
    assert after == before
