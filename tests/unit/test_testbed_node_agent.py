"""Small pieces of the node agent that need no cluster: addresses, service links, ports, files."""

from __future__ import annotations

import pytest
from noria_testbed.node_agent import PodAddresses, resolve_port, service_links, write_projection
from noria_testbed.node_agent.probes import container_port, has_probe
from noria_testbed.node_agent.volumes import mounts_rewriter, persistent_volume_for
from noria_testbed.podspec import PodSpecError
from noria_testbed.testbed import free_loopback_block


def test_pod_addresses_hand_out_the_lowest_free_one_and_reuse_released():
    addresses = PodAddresses("127.23.0.0/17")
    first, second = addresses.allocate(), addresses.allocate()
    assert (first, second) == ("127.23.0.2", "127.23.0.3")
    addresses.release(first)
    assert addresses.allocate() == "127.23.0.2"


def test_pod_addresses_skip_network_and_broadcast_like_octets():
    addresses = PodAddresses("127.5.0.0/23")
    handed = [addresses.allocate() for _ in range(300)]
    assert not any(ip.endswith((".0", ".1", ".255")) for ip in handed)
    assert len(set(handed)) == 300


def test_pod_addresses_refuse_a_block_outside_loopback():
    with pytest.raises(ValueError, match="not in 127.0.0.0/8"):
        PodAddresses("10.0.0.0/24")


def test_free_loopback_block_is_a_usable_second_octet():
    assert 1 <= free_loopback_block() <= 254


def test_service_links_follow_the_kubelet_naming():
    service = {"metadata": {"name": "churn-router"},
               "spec": {"clusterIP": "127.9.128.4", "ports": [{"name": "http", "port": 80}, {"name": "admin", "port": 81}]}}
    headless = {"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}
    assert service_links([service, headless]) == {
        "CHURN_ROUTER_SERVICE_HOST": "127.9.128.4", "CHURN_ROUTER_SERVICE_PORT": "80",
        "CHURN_ROUTER_SERVICE_PORT_HTTP": "80", "CHURN_ROUTER_SERVICE_PORT_ADMIN": "81"}


def test_target_ports_resolve_by_number_or_container_port_name():
    pod = {"spec": {"containers": [{"name": "s", "ports": [{"name": "http", "containerPort": 8080}]}]}}
    assert resolve_port(pod, 9000) == 9000
    assert resolve_port(pod, "9001") == 9001
    assert resolve_port(pod, "http") == 8080
    assert resolve_port(pod, "grpc") is None


def test_projection_writes_keys_or_items_and_drops_stale_files(tmp_path):
    write_projection(tmp_path, {"a": "1", "b": "2"}, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    write_projection(tmp_path, {"a": "10", "b": "2"}, [{"key": "a", "path": "conf/a.txt"}])
    assert (tmp_path / "conf" / "a.txt").read_text() == "10"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_probe_kinds_and_ports_follow_the_kubelet():
    container = {"name": "s", "ports": [{"name": "http", "containerPort": 8080}]}
    assert not has_probe(None) and not has_probe({}) and not has_probe({"periodSeconds": 1})
    assert has_probe({"httpGet": {"port": "http"}})
    assert container_port(container, "http") == 8080
    assert container_port(container, "9000") == 9000
    with pytest.raises(PodSpecError, match="not a declared container port"):
        container_port(container, "grpc")


def test_mount_paths_of_every_container_map_to_local_dirs(tmp_path):
    pod = {"spec": {"initContainers": [{"name": "i", "volumeMounts": [{"name": "cfg", "mountPath": "/etc/noria"}]}],
                    "containers": [{"name": "s", "volumeMounts": [
                        {"name": "store", "mountPath": "/var/lib/noria/store"},
                        {"name": "store", "mountPath": "/models", "subPath": "ml"},
                        {"name": "not-materialised", "mountPath": "/x"}]}]}}
    rewrite = mounts_rewriter(pod, {"cfg": tmp_path / "cfg", "store": tmp_path / "store"})
    assert rewrite("file:///var/lib/noria/store/ml/v1") == f"file://{tmp_path}/store/ml/v1"
    assert rewrite("/models/v1") == f"{tmp_path}/store/ml/v1"
    assert rewrite("/etc/noria/run.json") == f"{tmp_path}/cfg/run.json"
    assert rewrite("/x/y") == "/x/y"


def test_a_pending_claim_gets_a_persistent_volume_bound_to_it(tmp_path):
    claim = {"metadata": {"name": "noria-store", "namespace": "ml", "uid": "u-1"},
             "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}}}}
    volume = persistent_volume_for(claim, tmp_path)
    assert volume["metadata"]["name"] == "noria-u-1"
    assert volume["spec"]["claimRef"] == {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "ml",
                                          "name": "noria-store", "uid": "u-1"}
    assert volume["spec"]["capacity"] == {"storage": "5Gi"}
    assert volume["spec"]["accessModes"] == ["ReadWriteMany"]
    assert volume["spec"]["hostPath"]["path"] == str(tmp_path)
