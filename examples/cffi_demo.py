"""cffi with rsalloc memory: ffi.from_buffer (zero copy, pins the block),
ffi.cast of an address, a C callback sorting an rsalloc array, and a C
string handed to libc.

Run: python examples/cffi_demo.py
"""

from __future__ import annotations

import cffi

import rsalloc
from rsalloc import Float64, Int32, UseAfterFreeError, calloc, free, malloc, to_native_utf8

ffi = cffi.FFI()
ffi.cdef(
    """
    size_t strlen(const char *s);
    void qsort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *));
    double frexp(double x, int *exp);
    """
)
libc = ffi.dlopen(None)


@ffi.callback("int(const void *, const void *)")
def compare_ints(a: object, b: object) -> int:
    x, y = ffi.cast("int *", a)[0], ffi.cast("int *", b)[0]
    return (x > y) - (x < y)


def main() -> None:
    # 1. ffi.from_buffer: a cdata array over rsalloc memory, no copy.
    numbers = malloc(Int32, 8)
    numbers[:] = [42, -7, 19, 0, 3, 3, 100, -50]
    view = ffi.from_buffer("int[]", numbers)
    libc.qsort(view, len(numbers), ffi.sizeof("int"), compare_ints)
    print("sorted by C qsort:", numbers[:])
    view[0] = -99  # writes land in the rsalloc block
    print("written through cffi:", numbers[0])

    # 2. ffi.cast of the address: a plain C pointer (no pin; rsalloc owns it).
    p = ffi.cast("int *", numbers.address)
    print("ffi.cast(int *)[7]:", p[7])

    # 3. A C string from to_native_utf8.
    s = to_native_utf8("naïve café")
    print("strlen:", libc.strlen(ffi.cast("char *", s.address)), "bytes for", repr(s.to_str()))

    # 4. An out-parameter: frexp(x, int *exp) writes into an rsalloc Int32.
    exp = malloc(Int32)
    mantissa = libc.frexp(48.0, ffi.from_buffer("int[]", exp))
    print(f"frexp(48.0) = {mantissa} * 2**{exp[0]}")

    # 5. A buffer export pins the memory: freeing makes the Pointer dead at
    #    once, the bytes stay valid until cffi releases its view.
    free(numbers)
    try:
        numbers[0]
    except UseAfterFreeError as e:
        print("after free:", type(e).__name__)
    print("cffi view still reads:", view[1])
    ffi.release(view)  # now the memory goes back

    doubles = calloc(Float64, 3)
    arr = ffi.from_buffer("double[]", doubles)
    arr[2] = 2.5
    print("double[] via cffi:", doubles[:], "len", len(arr))
    ffi.release(arr)
    for x in (s, exp, doubles):
        free(x)
    st = rsalloc.stats()
    print(f"rsalloc: {st.total_allocs} allocations, {st.live_count} live")
    assert st.live_count == 0


if __name__ == "__main__":
    main()
