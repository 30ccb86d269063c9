"""Triton kernels, one module per op family. Importing a module here imports triton;
``mtlkernels.ops`` does so only when the Triton backend is chosen."""
