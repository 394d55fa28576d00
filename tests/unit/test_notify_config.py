"""The receivers of a namespace: ConfigMap noria-notifications parsed and checked, each receiver paired
with its URL from Secret noria-notifications; a bad entry is named and left out, the others stay."""

from __future__ import annotations

import base64

import pytest
from noria import notifications as n
from noria.notify import configure, decode_secret


def receivers(text: str) -> n.Receivers:
    return n.parse_receivers({n.RECEIVERS_KEY: text})


def test_a_receiver_with_every_field():
    got = receivers("- {name: team-chat, events: [rollout-aborted, AnalysisFailed], secretKey: chat.url, timeout: 2s}")
    assert got.problems == ()
    assert got.receivers == (n.Receiver("team-chat", frozenset({"rollout-aborted", "AnalysisFailed"}), "chat.url", 2.0),)


def test_defaults_are_every_transition_the_name_as_key_and_five_seconds():
    [r] = receivers("- name: ops").receivers
    assert r.events == frozenset(n.TRANSITIONS) and r.secret_key == "ops" and r.timeout == 5.0


def test_no_configmap_key_at_all_is_no_receivers_and_no_problem():
    assert n.parse_receivers({}) == n.Receivers()
    assert receivers("") == n.Receivers()


@pytest.mark.parametrize(("text", "says"), [
    ("- name: a\n  events: [rollout-abort]", "receivers[0] ('a').events[0]: 'rollout-abort' is neither a transition"),
    ("- name: a\n  event: [run-failed]", "receivers[0]: unknown field 'event'"),
    ("- name: Team_Chat", "receivers[0].name: required, a DNS label"),
    ("- events: [run-failed]", "receivers[0].name: required"),
    ("- name: a\n  events: []", "receivers[0] ('a').events: a non-empty list"),
    ("- name: a\n  events: run-failed", "receivers[0] ('a').events: a non-empty list"),
    ("- name: a\n  timeout: 1 minute", "receivers[0] ('a').timeout: a duration above 0 and at most 10s"),
    ("- name: a\n  timeout: 30s", "receivers[0] ('a').timeout: a duration above 0 and at most 10s"),
    ("- name: a\n  timeout: 0", "receivers[0] ('a').timeout"),
    ("- name: a\n  secretKey: 'a/b'", "receivers[0] ('a').secretKey: a Secret data key"),
    ("- just-a-string", "receivers[0]: must be a mapping"),
    ("name: a", "must be a YAML list of receivers"),
    ("- name: a\n  events: [run-failed\n", "not valid YAML at line"),
], ids=lambda v: v if len(v) < 40 else v[:40])
def test_a_bad_entry_is_named_with_its_field(text, says):
    got = receivers(text)
    assert got.receivers == ()
    assert len(got.problems) == 1 and says in got.problems[0], got.problems
    assert got.problems[0].startswith("ConfigMap noria-notifications key 'receivers'")


def test_a_bad_entry_leaves_the_good_ones_receiving():
    got = receivers("- {name: good}\n- {name: bad, events: [nonsense]}\n- {name: good}\n- {name: other, timeout: 1}")
    assert [r.name for r in got.receivers] == ["good", "other"]
    assert len(got.problems) == 2
    assert "receivers[1] ('bad').events[0]" in got.problems[0]
    assert "receivers[2].name: 'good' is used twice" in got.problems[1]


def test_the_wrong_configmap_key_says_where_the_list_goes():
    [problem] = n.parse_receivers({"receivers.yaml": "- name: a"}).problems
    assert "missing (found keys ['receivers.yaml'])" in problem


def test_every_reason_a_group_names_is_a_known_reason():
    grouped = (n.RUN_FAILURE_REASONS | n.PROMOTION_REASONS | n.PAUSE_REASONS | n.DEGRADED_REASONS
               | n.ROLLED_BACK_REASONS | set(n._VERSION_REASONS))
    assert grouped <= n.KNOWN_REASONS
    assert "Ready" not in n.KNOWN_REASONS and "True" not in n.KNOWN_REASONS  # condition types and statuses are not


# --- the Secret ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "problem"), [
    ("https://hooks.example.com/services/T0/B0/xyz", None),
    ("http://127.0.0.1:8080/hook?token=a", None),
    ("HTTPS://Example.com", None),
    ("https://hooks.example.com/x\n", "ends with whitespace (a newline from `echo`?"),
    ("https://hooks.example.com/a b", "contains whitespace"),
    ("ftp://example.com/x", "not an http:// or https:// URL"),
    ("hooks.example.com/x", "not an http:// or https:// URL"),
    ("https://user:secret@example.com/x", "carries user:password@"),
    ("https://" + "a" * 3000, "longer than 2048"),
])
def test_url_problems_never_repeat_the_url(url, problem):
    got = n.url_problem(url)
    assert (got is None) == (problem is None)
    if problem:
        assert problem in got and url.strip() not in got


def test_each_receiver_gets_its_url_and_a_missing_key_is_named():
    rs = receivers("- {name: chat}\n- {name: audit, secretKey: audit-url}\n- {name: broken}")
    targets, problems = n.resolve_targets(rs, {"chat": "https://chat.example/h", "audit-url": "http://audit:80/x",
                                               "broken": "not-a-url"})
    assert [(t.receiver.name, t.url) for t in targets] == [("chat", "https://chat.example/h"),
                                                          ("audit", "http://audit:80/x")]
    assert problems == ("receiver 'broken': Secret noria-notifications key 'broken': not an http:// or https:// URL",)
    _, missing = n.resolve_targets(rs, {})
    assert "receiver 'chat': Secret noria-notifications has no key 'chat'" in missing[0]
    _, absent = n.resolve_targets(rs, None)
    assert "Secret noria-notifications does not exist" in absent[0]
    assert "--from-literal=chat=https://" in absent[0]


def test_secret_data_is_decoded_and_a_bad_value_is_left_out():
    secret = {"data": {"chat": base64.b64encode(b"https://chat.example/h").decode(), "bad": "%%%"},
              "stringData": {"plain": "http://x/y"}}
    assert decode_secret(secret) == {"chat": "https://chat.example/h", "plain": "http://x/y"}
    assert decode_secret(None) is None


def test_configure_reads_the_secret_only_for_valid_receivers():
    config_map = {"data": {"receivers": "- {name: chat}\n- {name: bad, timeout: 99s}"}}
    secret = {"data": {"chat": base64.b64encode(b"https://chat.example/h").decode()}}
    targets, problems = configure(config_map, secret)
    assert [t.receiver.name for t in targets] == ["chat"] and len(problems) == 1 and "'bad'" in problems[0]
    assert configure(None, secret) == ((), ())


def test_the_example_configmap_has_no_problem():
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[2] / "examples" / "06-notifications" / "receivers.yaml"
    config_map = yaml.safe_load(path.read_text())
    assert config_map["metadata"]["name"] == "noria-notifications"
    got = n.parse_receivers(config_map["data"])
    assert got.problems == () and [r.name for r in got.receivers] == ["team-chat", "audit"]
    assert got.receivers[1].secret_key == "audit-url" and "AnalysisFailed" in got.receivers[1].events
