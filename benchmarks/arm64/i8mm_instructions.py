"""Run the Armv8.6 i8mm instructions SMMLA, UMMLA, USMMLA (NEON) on random inputs and compare
with the architectural definition computed in numpy: Vd(2x2 int32) += A(2x8) @ B(2x8)^T."""
import ctypes
import mmap
import struct

import numpy as np


def encode(op):  # op(Vd=0, Vn=1, Vm=2)
    base = {"smmla": 0x4E80A400, "ummla": 0x6E80A400, "usmmla": 0x4E80AC00}[op]
    return base | (2 << 16) | (1 << 5) | 0

def func(op):
    words = [
        0x4C407001,  # ld1 {v1.16b}, [x0]
        0x4C407022,  # ld1 {v2.16b}, [x1]
        0x4C407840,  # ld1 {v0.4s}, [x2]
        encode(op),
        0x4C007840,  # st1 {v0.4s}, [x2]
        0xD65F03C0,  # ret
    ]
    code = struct.pack(f"<{len(words)}I", *words)
    buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    f = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(addr)
    f._buf = buf
    return f

rng = np.random.default_rng(0)
for op in ("smmla", "ummla", "usmmla"):
    f = func(op)
    bad = 0
    for _ in range(2000):
        a = rng.integers(0, 256, 16, dtype=np.uint8)
        b = rng.integers(0, 256, 16, dtype=np.uint8)
        acc = rng.integers(-2**20, 2**20, 4, dtype=np.int32)
        out = acc.copy()
        f(a.ctypes.data, b.ctypes.data, out.ctypes.data)
        A = (a.view(np.int8) if op == "smmla" else a).astype(np.int64).reshape(2, 8)
        B = (b.view(np.int8) if op in ("smmla", "usmmla") else b).astype(np.int64).reshape(2, 8)
        want = (acc.astype(np.int64).reshape(2, 2) + A @ B.T).reshape(-1)
        bad += int(not np.array_equal(out.astype(np.int64), want))
    print(f"{op:7s} wrong in {bad} of 2000 random cases")
