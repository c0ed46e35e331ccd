"""Reduction op codes shared by the kernels; ``ringcomm.ReduceOp`` takes its values from here."""

SUM, PROD, MIN, MAX, AVG, BAND, BOR, BXOR = range(8)
BITWISE = (BAND, BOR, BXOR)
