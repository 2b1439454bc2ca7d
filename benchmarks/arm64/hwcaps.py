import ctypes

libc = ctypes.CDLL(None)
libc.getauxval.restype = ctypes.c_ulong
h1, h2 = libc.getauxval(16), libc.getauxval(26)
bits1 = {"asimd": 1, "asimddp": 20, "sve": 22}
bits2 = {"svei8mm": 9, "i8mm": 13, "bf16": 14, "sme": 23, "sme2": 37}
print({k: bool(h1 >> b & 1) for k, b in bits1.items()}, {k: bool(h2 >> b & 1) for k, b in bits2.items()})
