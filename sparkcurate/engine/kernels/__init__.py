"""The engine's GPU kernels (Triton, Gluon, cuBLASLt epilogues), the switches that steer them, and what ran.

* Attention back-ends of the packed DeBERTa forward, one module each, each an
  :class:`~.backends.AttentionBackend`: :mod:`.relative_attention` (Triton tile kernel; it hands Hopper GPUs to
  :mod:`.relative_attention_smem`, Gluon), :mod:`.dflash_attention` (the disentangled-flash package) and
  :mod:`.reference_attention` (Hugging Face's module per sequence, for CPU tests). A new kernel is one module here
  plus one row in :data:`sparkcurate.engine.deberta_packed.ATTENTION_BACKENDS`.
* Per-layer fusions: :mod:`.residual_norm` (residual add + LayerNorm), :mod:`.gelu_epilogue` (GELU in the GEMM);
  :mod:`.split_weights` (fp32 weights as fp16 pairs, ``precision="fp16-split"``).
* :mod:`.switches`: every ``SPARKCURATE_*`` switch, read one way. :mod:`.usage`: :func:`active_kernels`, what
  actually ran (recorded where each choice is made).
"""

from sparkcurate.engine.kernels.usage import active_kernels

__all__ = ["active_kernels"]
