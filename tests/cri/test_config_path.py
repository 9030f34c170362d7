"""containerd's registry `config_path` against the mirror's startup warnings, on real daemons.

The CRI pull (the kubelet's) either reads `<config_path>/<registry>/hosts.toml`
and asks the mirror first, or silently skips it. containerd 2.x pulls CRI images
through the transfer service, which takes `config_path` as one directory: a
':'-separated list (which 1.x accepts) matches nothing, unless
`use_local_image_pull = true`. Each case pulls an image through a recording
mirror and starts a real `mirror registry` on the same config.toml: the mirror
warns about the config path exactly when containerd skips the mirror.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.kit.containerd import ContainerdNode
from bench.kit.cri import CriImageClient
from bench.kit.hosts import write_hosts_toml
from bench.kit.images import generate_image, push_image
from bench.kit.mirror import MirrorNode
from bench.kit.recorder import RequestRecorder
from bench.kit.registry import UpstreamRegistry
from bench.kit.releases import containerd_release
from tests.containerd.conftest import require_containerd

pytestmark = pytest.mark.integration
TRANSFER_SERVICE_WARNING = "takes config_path as a single directory"


def _config_warnings(node: ContainerdNode, workdir: Path) -> list[str]:
    """The warnings a real `mirror registry` logs at start for this node's config.toml."""
    mirror = MirrorNode(
        host="127.0.0.61",
        containerd_sock=node.address,
        workdir=workdir,
        log_level="WARN",
        containerd_config_file=node.config_file,
        extra_args=[f"--containerd-registry-config-path={node.config_path}"],
    )
    with mirror:
        lines = mirror.process.log_path.read_text().splitlines()
    warnings = [json.loads(line)["msg"] for line in lines if '"level": "WARN' in line]
    # This mirror runs alone, without a cluster key: that warning is not this test's.
    return [w for w in warnings if not w.startswith("the DHT is unauthenticated")]


@pytest.mark.parametrize(
    ("series", "path_list", "local_pull", "mirror_asked"),
    [
        ("1.6", True, False, True),
        ("1.7", True, False, True),
        ("2.1", False, False, True),
        ("2.1", True, False, False),
        ("2.1", True, True, True),
    ],
    ids=["1.6-list", "1.7-list", "2.1-one-dir", "2.1-list", "2.1-list-local-pull"],
)
def test_the_warning_is_given_when_containerd_skips_the_mirror(
    tmp_path: Path, series: str, path_list: bool, local_pull: bool, mirror_asked: bool
) -> None:
    require_containerd()
    release = containerd_release(series)
    node = ContainerdNode(
        "node",
        tmp_path,
        containerd_binary=release.containerd,
        ctr_binary=release.ctr,
        cri=True,
        extra_config_dirs=[tmp_path / "other.d"] if path_list else [],
        use_local_image_pull=local_pull,
    )
    with UpstreamRegistry(tmp_path / "upstream") as upstream, RequestRecorder() as recorder:
        image = generate_image(
            tmp_path / "layout", name="cfg/app", tag="v1", seed=1, total_size=1 << 20, layers=1
        )
        push_image(image.layout_dir, image.tag, image.ref(upstream.host))
        # The recorder stands where the mirror would: it answers 404 to everything.
        write_hosts_toml(node.config_path, upstream.host, upstream.url, [recorder.url])
        with node, CriImageClient(node.address) as cri:
            cri.wait_ready()
            cri.pull(image.ref(upstream.host))
            warnings = _config_warnings(node, tmp_path / "mirror")
        asked = [r.path for r in recorder.recorded()]
    assert bool(asked) == mirror_asked, asked
    transfer_warnings = [w for w in warnings if TRANSFER_SERVICE_WARNING in w]
    if series.startswith("1."):
        # A version 2 file could be read by 2.x too: the warning says "if".
        assert [w.startswith("if this containerd is 2.x: ") for w in transfer_warnings] == [True]
    else:
        assert len(transfer_warnings) == (0 if mirror_asked else 1), warnings
    assert not [w for w in warnings if w not in transfer_warnings], warnings
