"""The inference engine, no Spark: texts in, one float row per document out, in input order.

* :mod:`.runner` the engine (micro-batches, prefetch, out-of-memory back-off), with :mod:`.batching` and
  :mod:`.tokenize`;
* :mod:`.deberta_packed` the unpadded DeBERTa forward, which picks its attention from ``ATTENTION_BACKENDS``;
* :mod:`.kernels` the GPU kernels, their ``SPARKCURATE_*`` switches and the record of which ones ran.
"""
