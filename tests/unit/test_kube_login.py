"""kopf logs in with the operator's own client (the one that applies children), never by a second lookup of
~/.kube/config: kwokctl, kind and others leave that file naming clusters long gone, and a watch that logs in there
while the client applies elsewhere is an operator that never sees its objects."""

from __future__ import annotations

import pytest
import yaml
from kubernetes import client

from agentfleet.control.kube import Kube, new_api_client

KUBECONFIG = {
    "apiVersion": "v1", "kind": "Config", "current-context": "test",
    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", "certificate-authority": "CA"}}],
    "users": [{"name": "u", "user": {"token": "tok-123"}}],
    "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
}


@pytest.mark.parametrize(("api_key", "token"), [
    ({"authorization": "Bearer abc"}, "abc"),
    ({"authorization": "bearer abc"}, "abc"),
    ({"BearerToken": "Bearer abc"}, "abc"),
    ({}, None),
], ids=["bearer", "lowercase-bearer", "bearer-token-key", "no-token"])
def test_connection_info_is_the_clients_own(api_key, token):
    cfg = client.Configuration()
    cfg.host, cfg.api_key, cfg.ssl_ca_cert = "https://10.0.0.1:443", api_key, "/ca.crt"
    info = Kube(client.ApiClient(cfg)).connection_info()
    assert (info.server, info.token, info.ca_path, info.insecure) == ("https://10.0.0.1:443", token, "/ca.crt", False)


def test_a_kubeconfig_file_reaches_kopf_unchanged(tmp_path, monkeypatch):
    (tmp_path / "CA").write_text("not read here")
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(KUBECONFIG))
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))  # no ~/.kube/config to fall back to
    info = Kube(new_api_client(str(path))).connection_info()
    assert info.server == "https://127.0.0.1:6443" and info.token == "tok-123"
    assert info.ca_path == str(tmp_path / "CA")
