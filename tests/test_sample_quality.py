"""The evaluation classifier and the Frechet distance in its feature space."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vae_edge import VaeEdgeError
from vae_edge.data import load_slice
from vae_edge.sample_quality import EvalClassifier, feature_stats, frechet_distance, sample_quality


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    # diagonal covariances: FD = |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    a_var, b_var = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    want = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(a_var) - np.sqrt(b_var)) ** 2).sum()
    got = frechet_distance((mu_a, np.diag(a_var)), (mu_b, np.diag(b_var)))
    assert abs(got - want) < 1e-9
    # a rotated pair (non-commuting covariances) against the definition with an explicit sqrtm
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    sa, sb = np.diag(a_var), q @ np.diag(b_var) @ q.T
    w, v = np.linalg.eig(sa @ sb)
    tr = np.sqrt(w.real.clip(0)).sum()
    want = ((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr
    assert abs(frechet_distance((mu_a, sa), (mu_b, sb)) - want) < 1e-8
    assert abs(frechet_distance((mu_a, sa), (mu_a, sa))) < 1e-8


def test_shipped_classifier_is_accurate_and_its_features_separate_digits_from_noise(mnist_dir):
    clf = EvalClassifier()
    assert clf.info["test_accuracy"] >= 0.99
    x, y = load_slice("mnist:test[0:2000]", mnist_dir)
    logits, f = clf.run(x)
    assert f.shape == (2000, 128) and (logits.argmax(1) == y).mean() >= 0.985
    train, _ = load_slice("mnist:train[0:2000]", mnist_dir)
    real = feature_stats(f)
    near = frechet_distance(feature_stats(clf.run(train)[1]), real)
    noise = np.random.default_rng(0).random(x.shape, dtype=np.float32)
    blurry = (x[::-1] + x) / 2  # averaged pairs of digits: digit-like, but not digits
    assert near < frechet_distance(feature_stats(clf.run(blurry)[1]), real) < frechet_distance(
        feature_stats(clf.run(noise)[1]), real)


def test_a_changed_classifier_is_refused(tmp_path):
    from vae_edge.sample_quality import CLASSIFIER

    shutil.copytree(CLASSIFIER, tmp_path / "c")
    info = json.loads((tmp_path / "c" / "classifier.json").read_text())
    info["sha256"] = "0" * 64
    (tmp_path / "c" / "classifier.json").write_text(json.dumps(info))
    with pytest.raises(VaeEdgeError, match="does not match its sha256"):
        EvalClassifier(tmp_path / "c")


def test_sample_quality_of_a_bundle(bundles, mnist_dir):
    res = sample_quality(bundles["mlp-cond"], ("fp32",), samples=200, data_dir=mnist_dir)
    row = res["rows"][0]
    assert row["variant"] == "fp32" and row["frechet"] > res["floor_train_vs_test"] >= 0
    assert 0 <= row["conditional_accuracy"] <= 1 and len(row["per_digit"]) == 10
    with pytest.raises(VaeEdgeError, match="samples must lie"):
        sample_quality(bundles["mlp"], samples=10, data_dir=mnist_dir)
