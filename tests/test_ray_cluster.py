"""The ray engine on a two-node cluster without shared storage: ``ray.cluster_utils.Cluster`` starts two
raylets on this machine (one CPU and a small object store each, no network beyond loopback); the driver
and every worker run in a folder that holds neither the repository nor the images, the code arrives as
Ray ``py_modules``, the weights through the object store and the images as bytes (read by the driver,
or fetched by Ray tasks from a ``file://`` URL with fsspec).  Rows equal the local engine's to 1e-5.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from methods_helpers import extract_rows
from ray_helpers import DEEP, HOG, make_workspace

from cbir.errors import CbirError
from cbir.features.ray_engine import extract_on_ray, image_items, import_ray, runtime_env
from cbir.settings import Extract, MethodRun

REPO = Path(__file__).resolve().parents[1]
OBJECT_STORE = 80 * 2**20

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*deprecated.*:DeprecationWarning")]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, random_mobilenet_file):
    return make_workspace(tmp_path_factory.mktemp("project"), random_mobilenet_file)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two raylets, each with its own CPU and object store, started from (and so working in) an empty folder."""
    ray = import_ray()
    from ray.cluster_utils import Cluster

    elsewhere = tmp_path_factory.mktemp("elsewhere")
    before = os.getcwd()
    os.chdir(elsewhere)
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": OBJECT_STORE,
                                                          "include_dashboard": False})
    try:
        nodes.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
        nodes.wait_for_nodes()
        ray.init(address=nodes.address, runtime_env=runtime_env(), log_to_driver=False, configure_logging=False)
        yield ray, elsewhere
    finally:
        ray.shutdown()
        nodes.shutdown()
        os.chdir(before)


def where_workers_run(ray) -> list[tuple[str, str, str]]:
    """``(node id, working directory, cbir's file)`` of a task on each node, with the job's runtime env."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=1)
    def probe():
        import cbir

        return ray.get_runtime_context().get_node_id(), os.getcwd(), cbir.__file__

    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    return ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
                    for node in nodes])


def test_workers_run_shipped_code_outside_the_repository(cluster, workspace):
    ray, elsewhere = cluster
    root = workspace[0]
    seen = where_workers_run(ray)
    assert len({node for node, _, _ in seen}) == 2
    for _, cwd, code in seen:
        for project in (REPO, root):
            assert not Path(cwd).resolve().is_relative_to(project.resolve())
            assert not Path(code).resolve().is_relative_to(project.resolve())
        assert Path(code).name == "__init__.py" and "runtime_resources" in Path(code).parts


def test_deep_rows_on_two_nodes_equal_the_local_engine(cluster, workspace):
    root, params, paths = workspace
    local, _ = extract_rows(paths, DEEP, params, root)
    run = MethodRun.from_params(params, "mnv2-gem")
    assert str(root) not in repr(run)  # what the actors receive names no path of the project
    out = np.full_like(local, np.nan)
    info = extract_on_ray(paths, root, run, Extract.from_params(params), out)
    np.testing.assert_allclose(out, local, atol=1e-5)
    # one actor per CPU: two one-CPU actors on two one-CPU nodes, so one on each
    assert info == {"device": "cpu", "engine": "ray", "num_actors": 2, "batch_size": 3, "decode_tasks": False,
                    "image_size": 64, "scales": [1.0]}


def test_handcrafted_rows_fetched_from_a_url_equal_the_local_engine(cluster, workspace):
    root, params, paths = workspace
    local, _ = extract_rows(paths, HOG, {"curate": {"max_pixels": 1_000_000}})
    settings = Extract.from_params({**params, "extract": {**params["extract"], "ray": {
        **params["extract"]["ray"], "images_url": root.as_uri()}}})
    items = image_items(paths, root, settings.ray["images_url"])
    assert items[3] == {"row": 3, "name": str(paths[3]), "url": f"{root.as_uri()}/data/raw/toy/03.png"}
    out = np.full_like(local, np.nan)
    extract_on_ray(paths, root, MethodRun.from_params(params, "hog"), settings, out)
    np.testing.assert_allclose(out, local, atol=1e-5)


def test_a_missing_url_is_one_clear_line(cluster, workspace, tmp_path):
    root, params, paths = workspace
    settings = Extract.from_params({**params, "extract": {**params["extract"], "ray": {
        **params["extract"]["ray"], "images_url": tmp_path.as_uri()}}})
    with pytest.raises(CbirError) as caught:
        extract_on_ray(paths[:2], root, MethodRun.from_params(params, "hog"), settings, np.zeros((2, 324), np.float32))
    message = str(caught.value)
    assert message.startswith(f"cannot read image {tmp_path.as_uri()}/data/raw/toy/0") and "\n" not in message
    assert message.endswith("(check extract.ray.images_url and the storage credentials on the Ray nodes)")
