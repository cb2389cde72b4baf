"""numpy arrays <-> attention.v1.Tensor (row-major, little-endian raw_data).

numpy has no bfloat16, so bfloat16 travels as uint16 bit patterns converted
here with integer ops: float32 -> bfloat16 rounds to nearest even (NaN stays a
quiet NaN of the same sign); bfloat16 -> float32 is exact.
"""

import numpy as np

from attention.v1 import attention_pb2

# The dtype names the client accepts, their wire enum and element size.
DTYPES = {
    "float32": (attention_pb2.FLOAT32, 4),
    "bfloat16": (attention_pb2.BFLOAT16, 2),
    "float16": (attention_pb2.FLOAT16, 2),
}
_NAMES = {enum: name for name, (enum, _) in DTYPES.items()}


def dtype_name(enum_value):
    """'float32', 'bfloat16', 'float16', or 'unspecified' for a DataType value."""
    return _NAMES.get(enum_value, "unspecified")


def float32_to_bfloat16_bits(values):
    """bfloat16 bit patterns (uint16 array, same shape) of `values`, rounded to nearest even."""
    f = np.ascontiguousarray(values, dtype=np.float32)
    bits = f.view(np.uint32)
    # Adding 0x7FFF plus the lowest kept bit, then dropping the low 16 bits,
    # rounds to nearest with ties to even; a carry into the exponent is the
    # correct result (up to +-inf past the largest bfloat16).
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    out = ((bits + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        # Truncating could turn a NaN into Inf; keep the sign and set the quiet bit.
        out[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return out


def bfloat16_bits_to_float32(bits):
    """float32 values (exact) of bfloat16 bit patterns given as a uint16 array."""
    b = np.ascontiguousarray(bits, dtype=np.uint16)
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def encode(values, dtype="float32"):
    """An attention.v1.Tensor holding `values` (array-like of reals) as `dtype` raw_data."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    a = np.asarray(values)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"expected an array of real numbers, got dtype {a.dtype}")
    if dtype == "float32":
        raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
    elif dtype == "float16":
        raw = np.ascontiguousarray(a, dtype="<f2").tobytes()
    else:
        raw = float32_to_bfloat16_bits(a).astype("<u2", copy=False).tobytes()
    return attention_pb2.Tensor(dtype=DTYPES[dtype][0], shape=a.shape, raw_data=raw)


def decode(tensor, label="tensor"):
    """The values of an attention.v1.Tensor as a new float32 numpy array of its shape.

    Raises ValueError when the tensor is malformed (unknown dtype, size not
    matching the shape); `label` names it in the message.
    """
    shape = tuple(int(d) for d in tensor.shape)
    count = int(np.prod(shape, dtype=np.int64))
    if tensor.float_data and not tensor.raw_data:
        if len(tensor.float_data) != count:
            raise ValueError(f"{label}.float_data: expected {count} values for shape "
                             f"{list(shape)}, got {len(tensor.float_data)}")
        return np.array(tensor.float_data, dtype=np.float32).reshape(shape)
    name = dtype_name(tensor.dtype)
    if name == "unspecified":
        raise ValueError(f"{label}.dtype: unsupported value {tensor.dtype}")
    size = DTYPES[name][1]
    if len(tensor.raw_data) != count * size:
        raise ValueError(f"{label}.raw_data: expected {count * size} bytes for shape "
                         f"{list(shape)} {name}, got {len(tensor.raw_data)}")
    if name == "float32":
        out = np.frombuffer(tensor.raw_data, dtype="<f4").astype(np.float32)
    elif name == "float16":
        out = np.frombuffer(tensor.raw_data, dtype="<f2").astype(np.float32)
    else:
        out = bfloat16_bits_to_float32(np.frombuffer(tensor.raw_data, dtype="<u2"))
    return out.reshape(shape)
