"""llamita's matrix kernels: quantized weights times activations, on the CPU the user has.

    native.py        builds csrc/ once per SIMD level (AVX-512 VNNI, AVX-VNNI, AVX2, NEON
                     dotprod, portable C++) and picks the best level the CPU has;
                     LLAMITA_ISA holds a run to a lower one
    int4.py          4-bit weights (Q4_0, Q4_1, Q4_K in their own scales), Q6_K in its own
                     6-bit blocks, and their matmuls
    int8.py          Q8_0 in its own 32-weight blocks, per-row int8 weights (Q5_*, Q2_K, Q3_K
                     re-quantized) and their matmuls
    encoded_rows.py  a table kept in its file encoding, decoded only at the rows looked up
    csrc/            the C++: one file per kernel family and level, shared headers

Every kernel is checked at every level the CPU has against a float64 statement
(tests/kernels); the NEON level under qemu. Imports nothing else of llamita.
"""
