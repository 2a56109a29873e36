"""An engine on the second GPU while the process's current device is still the first one.

Why: Spark gives each task a GPU address, and a Python worker's current CUDA device stays cuda:0 unless someone
changes it. Triton kernels (the packed attention) launch on the current device, so a model on cuda:1 failed
with "Pointer argument cannot be accessed from Triton" on the 2-GPU machine until the engine made its own GPU
current while it works. Run on a machine with two GPUs:  python3 -m pytest -m gpu tests/gpu/test_multi_gpu.py
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import DOMAIN_TEST_LABELS

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                 reason="needs two CUDA GPUs")]


def test_engine_on_second_gpu_matches_first(tmp_path, sample_texts):
    from sparkcurate.classifiers import DomainClassifier
    from tests.fixtures.tiny_models import deberta_backbone_config_dict, make_deberta_classifier

    base = tmp_path / "base"
    base.mkdir()
    # head dimension 64: the shape the packed Triton kernel runs (hidden 128, 2 heads)
    import json
    (base / "config.json").write_text(json.dumps(deberta_backbone_config_dict(hidden=128, heads=2,
                                                                              intermediate=256)))
    path = make_deberta_classifier(tmp_path / "m", DOMAIN_TEST_LABELS, seed=5, base_model=str(base))
    clf = DomainClassifier(model=str(path))
    clf.preflight()
    texts = sample_texts * 4
    assert torch.cuda.current_device() == 0
    second = clf.load_engine("cuda:1")
    first = clf.load_engine("cuda:0")
    got1 = second.predict(texts)
    got0 = first.predict(texts)
    assert torch.cuda.current_device() == 0  # the engine restores the caller's device
    assert np.isfinite(got1).all() and got1.shape == (len(texts), len(DOMAIN_TEST_LABELS))
    assert np.abs(got1 - got0).max() < 1e-3
    assert second.packed == first.packed
