"""The engine on a real GPU: bf16/fp16 within 1e-2 of the fp32 CPU probabilities, same order, OOM back-off.

Run on the GPU machine with:  python3 -m pytest -m gpu tests/gpu -q
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def classifier(deberta_dir):
    from sparkcurate.classifiers import DomainClassifier

    c = DomainClassifier(model=str(deberta_dir))
    c.preflight()
    return c


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("packed", ["off", "auto"])
def test_gpu_probabilities_within_1e2_of_cpu_fp32(classifier, sample_texts, precision, packed):
    from dataclasses import replace

    texts = sample_texts * 8 + ["x", "word " * 5000]
    cpu = classifier.load_engine("cpu").predict(texts)
    gpu_clf = replace(classifier, precision=precision, packed=packed)
    engine = gpu_clf.load_engine("cuda:0")
    assert engine.precision == precision
    got = engine.predict(texts)
    assert np.abs(got - cpu).max() < 1e-2
    decisive = np.sort(cpu, axis=1)[:, -1] - np.sort(cpu, axis=1)[:, -2] > 0.05
    assert (got.argmax(1) == cpu.argmax(1))[decisive].all()


def test_auto_precision_on_gpu_is_half(classifier):
    engine = classifier.load_engine("cuda:0")
    assert engine.precision in ("bf16", "fp16")
    assert next(engine.model.parameters()).is_cuda
