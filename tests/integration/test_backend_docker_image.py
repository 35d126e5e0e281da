"""The docker backend's image: created by tag without a lookup, built only when the daemon
answers that it has no such image (a fresh daemon, or one whose image was removed)."""

from __future__ import annotations

import nixcell
from nixcell import CellSpec
from nixcell.sandbox import dockerapi, dockerimage


def test_a_removed_image_is_built_again_on_the_next_cell(dockerd, offline_set):
    client = dockerapi.Client()
    tag = dockerimage.tag()
    spec = CellSpec(command=["echo", "hi"], packages=["coreutils"], backend="docker")
    assert nixcell.run(spec, capture_output=True).stdout == b"hi\n"  # the image exists now
    client.call("DELETE", f"/images/{tag}", query={"force": "1"})
    dockerimage._ready.clear()  # (a new process would know nothing of it either)
    result = nixcell.run(spec, capture_output=True)
    assert (result.exit_code, result.stdout) == (0, b"hi\n"), result
    assert client.call("GET", f"/images/{tag}/json")["RepoTags"] == [tag]  # type: ignore[index]
