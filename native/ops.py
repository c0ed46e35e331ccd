"""Reduction op codes and dtypes shared by the kernels and the buffer intake;
``ringcomm.ReduceOp`` takes its values from here."""

SUM, PROD, MIN, MAX, AVG, BAND, BOR, BXOR = range(8)

# Dtypes with a numba kernel of their own (float16 and bfloat16 go through uint16 bits,
# bool through uint8).
NATIVE_DTYPES = (
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float32",
    "float64",
)
# Every numpy dtype a buffer may have.
BUFFER_DTYPES = ("bool", "float16", *NATIVE_DTYPES)
