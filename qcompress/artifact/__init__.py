"""The artifact: a plain safetensors file of codes, scales and the recipe to rebuild each tensor.

Layout (format version 2; version 1 differs only in its checksums, see below):
- ``NAME.qcodes``: the integer codes of a quantized tensor ``NAME`` in its row view (channel axis
  first, other axes flattened). 8-bit codes are int8 (symmetric) or uint8 (affine) of shape
  (rows, cols); narrower codes are a dense little-endian bit stream in a 1-D uint8 tensor.
- ``NAME.qscale`` / ``NAME.qzero``: per row and group, (rows, n_groups), float32 or float16.
  With a second level (recipe ``scale_bits``), they hold instead the groups' scale and min codes
  as a dense ``scale_bits``-bit stream (1-D uint8, same bit order as the codes), and
  ``NAME.qsuper`` the float32 (n_blocks, 2) super-scale and super-min of each block of
  ``super_block`` consecutive groups ((n_blocks, 1), super-scales only, when symmetric); see
  ``qcompress.engine.level2`` for the decoding.
- ``NAME``: a tensor kept in float or passed through, unchanged, in its own dtype.
- ``__qcompress__/stats``: float64 (n_tensors, 3), each original tensor's MSE, max abs error and
  SQNR dB, so ``inspect`` can show the error without the original.
- ``__qcompress__/xxh3_128``: uint8 (n_stored + 1, 16), the XXH3-128 digest (big-endian, as
  ``xxhash.xxh3_128_digest`` gives it) of every stored tensor's bytes in payload order (``stats``
  included), then of the recipe JSON. It is written last, so the header can be computed before
  any tensor is quantized and the payload streamed behind it. The recipe's ``integrity`` names
  the algorithm and the tensor. The checksums guard against corruption (a flipped bit, a
  truncated copy), not against an attacker, who could recompute them: XXH3-128 does that at
  memory speed, where SHA-256 cost more than the quantization. Version 1 artifacts carry
  ``__qcompress__/sha256`` (n_stored + 1, 32) SHA-256 digests instead; they still open and verify.
- ``__metadata__["qcompress"]``: the recipe, canonical JSON (sorted keys, no spaces).

The artifact contains no timestamps or host names: the same input and options give the same bytes.

Modules: ``recipe`` (the canonical JSON, its constants and its one validation), ``layout``
(pure: which stored tensors hold each original tensor, and their sizes), ``writer`` (streams
the file), ``reader`` (:class:`Artifact`), ``sharded`` (:class:`ShardedArtifact`), ``inputs``
(open a path as an artifact or a weight file). This package imports only the engine, the
formats and the errors: it knows nothing of how tensors were chosen.
"""
