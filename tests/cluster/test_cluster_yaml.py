"""cluster.yaml is a valid Ray cluster-launcher config (the autoscaler's own schema)."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.conftest import REPO


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_the_autoscaler_schema(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    gpu = prepared["available_node_types"]["gpu_4xT4"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0
    assert any("ghns[gpu" in c for c in prepared["setup_commands"])


def test_the_schema_check_rejects_a_broken_config(cluster):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_4xT4"]["node_confg"] = {}  # a typo
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_shipped_configs_load(tmp_path):
    from ghns.config import resolve_config

    names = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert {"synthetic", "tiny", "cub_resnet50", "cars_resnet50", "aircraft_resnet50",
            "deepfashion_resnet50"} <= set(names)
    for name in names:
        cfg = resolve_config(str(REPO / "configs" / f"{name}.yaml"), {}, use_run_dir=False)
        if name.endswith("resnet50"):
            assert cfg.resolved_backbone() == "resnet50" and cfg.tau == 0.95
            assert (cfg.alpha, cfg.beta, cfg.gamma) == ((1.0, 1.0, 0.5) if name.startswith("deepfashion")
                                                        else (1.0, 0.8, 1.0))
