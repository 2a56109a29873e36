"""The engine's GPU kernels (Triton, Gluon, cuBLASLt epilogues) and the switches that steer them."""
