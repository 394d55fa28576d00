"""When a pipeline is passed again: polled triggers at the resync, the rest at their own requeue."""

from __future__ import annotations

from noria.training.handlers import next_pass_in


def test_a_cron_only_pipeline_waits_for_its_tick_not_the_resync():
    # Found by benchmarks/scale.py: 1,000 cron-only pipelines were passed every 30 s each.
    spec = {"triggers": {"schedule": {"cron": "0 0 1 1 *"}}}
    assert next_pass_in(spec, 86400.0, resync=30, idle_resync=600) == 600
    assert next_pass_in(spec, 12.0, resync=30, idle_resync=600) == 12
    assert next_pass_in({}, None, resync=30, idle_resync=600) == 600


def test_a_pipeline_with_a_polled_trigger_is_passed_every_resync():
    for kind in ("drift", "performance", "newData"):
        spec = {"triggers": {kind: {"x": 1}, "schedule": {"cron": "0 0 1 1 *"}}}
        assert next_pass_in(spec, 86400.0, resync=30, idle_resync=600) == 30
        assert next_pass_in(spec, None, resync=30, idle_resync=600) == 30
        assert next_pass_in(spec, 2.0, resync=30, idle_resync=600) == 2


async def test_a_model_version_judgement_that_fails_is_tried_again_on_a_fresh_read(monkeypatch):
    # Found by benchmarks/scale.py: 1,000 new versions at once met 429s, and Kopf drops a failed
    # event handler's work, so 8 versions stayed unregistered.
    import asyncio
    from types import SimpleNamespace

    from noria import kube
    from noria.training import handlers

    judged: list[str] = []

    async def judge(body):
        judged.append(body["metadata"]["resourceVersion"])
        if len(judged) == 1:
            raise RuntimeError("429 Too Many Requests")

    async def get(api_version, kind, name, namespace):
        return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": "2"}}

    st = SimpleNamespace(retries=set())
    monkeypatch.setattr(handlers, "state", lambda: st)
    monkeypatch.setattr(handlers, "_judge_model_version", judge)
    monkeypatch.setattr(handlers, "MV_RETRY_SECONDS", (0.01,))
    monkeypatch.setattr(kube, "get", get)
    body = {"metadata": {"name": "p-v1", "namespace": "ml", "resourceVersion": "1"}}
    await handlers._judge_model_version_or_retry(body, attempt=0)
    await asyncio.sleep(0.1)
    assert judged == ["1", "2"] and not st.retries
