"""Sparse fine-tuning: train a chosen set of weight entries, keep state for those alone.

For each selected weight W (a flat view of n entries) we hold a sorted int32 index set I
of k entries and fp32 values v of the same length, starting at 0. The effective weight is
W + scatter_add(I, v): W itself never changes, so every entry outside I stays bit-identical
to the base, and merging is one exact scatter. Because the gradient of the effective
weight with respect to v is the dense gradient gathered at I, training v is training
those k entries; but the optimizer sees only v, so Adam keeps 2k moments instead of 2n.
(0/1 gradient masks on dense tensors save no optimizer memory.) Dynamic selection changes
the values of I, never its length, so the compiled train step never changes shape.

Here: the delta arithmetic (`deltas`), the choice of entries (`select`: random,
magnitude, bitfit; fisher and lt-sft rank by `scores`, fisher's from `fisher`), SpIEL's
moving index sets (`spiel`), and the training mode (`mode.SparseTraining`: dense-trainable
leaves beside the deltas, L1/L2 penalties, the adapter export in `interop.sparse_format`).
"""
