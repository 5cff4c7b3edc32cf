"""A real Kubernetes control plane for e2e tests: see launcher.py, build.sh and `python -m e2e.cluster -h`."""

from .launcher import (  # noqa: F401
    DEFAULT_NAME,
    FAKE_NODE_NAME,
    Cluster,
    ClusterError,
    add_fake_node,
    bin_dir,
    can_build,
    down,
    ensure_built,
    is_built,
    kubeconfig_path,
    kubectl_path,
    running_cluster,
    status,
    up,
    versions,
)
