"""The typed manifest (runtime/manifest.py): parsed once by the bundle reader, frozen, and what the
readers use."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vae_edge import VaeEdgeError
from vae_edge.runtime import shipped_bundles
from vae_edge.runtime.bundle import BundleError, open_bundle, read_manifest
from vae_edge.runtime.manifest import Manifest, ManifestError


def test_shipped_manifests_parse_to_the_same_facts_as_their_json():
    for path in shipped_bundles().values():
        raw = json.loads((path / "manifest.json").read_text())
        info = open_bundle(path, None).info
        assert info == read_manifest(path)
        assert (info.name, info.release, info.dataset) == (raw["name"], raw.get("release", 0), raw["dataset"])
        assert info.model.latent_dim == raw["model"]["latent_dim"] and info.model.arch == raw["model"]["arch"]
        assert set(info.variants) == set(raw["variants"]) and "fp32" in info.variants
        for v, entry in raw["variants"].items():
            assert dict(info.variants[v].files) == entry["files"]
            assert info.variants[v].dtype == entry.get("dtype", "float32")
            assert info.variants[v].neg_elbo_delta == (0.0 if v == "fp32" else entry["accuracy"]["neg_elbo_delta"])
        assert {n: (f.sha256, f.size) for n, f in info.files.items()} == \
            {n: (f["sha256"], f["size"]) for n, f in raw["files"].items()}
        assert {t: r.variant for t, r in info.targets.items()} == {t: r["variant"] for t, r in raw.get("targets", {}).items()}
        assert info.to_dict() == raw


def test_it_is_frozen_and_a_copy_is_a_copy():
    info = read_manifest(shipped_bundles()["mlp-mnist"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "other"
    with pytest.raises(TypeError):
        info.variants["x"] = None  # a read-only mapping
    d = info.to_dict()
    d["name"] = "changed"
    assert info.name == "mlp-mnist" and info.raw["name"] == "mlp-mnist"
    with pytest.raises(ManifestError, match="no variant 'int8-static'"):
        info.variant("int8-static")


@pytest.mark.parametrize("change, match", [
    (lambda m: m["model"].update(latent_dim="fifty"), "wrong type"),
    (lambda m: m.update(schema_version=2), "schema version 2; this vae-edge reads 1"),
    (lambda m: m["variants"]["fp32"].pop("files"), "must name an encoder and a decoder"),
])
def test_a_bad_manifest_is_one_line(tmp_path, bundle_copy, change, match):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    change(m)
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(VaeEdgeError, match=match) as e:
        open_bundle(bundle_copy, None)
    assert isinstance(e.value, (BundleError, ManifestError)) and "\n" not in str(e.value)


def test_from_dict_needs_the_model_and_variants():
    with pytest.raises(ManifestError, match="wrong type or is missing"):
        Manifest.from_dict({"schema_version": 1, "files": {}, "variants": {}})
