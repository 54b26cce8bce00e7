"""A C struct holding a `char **` of N strings (and its length), as Dart
writes it:

    final class Names extends Struct {
      external Pointer<Pointer<Utf8>> items;
      @Int32() external int count;
    }

    final names = calloc<Names>();
    names.ref.items = calloc<Pointer<Utf8>>(n);
    for (var i = 0; i < n; i++) names.ref.items[i] = words[i].toNativeUtf8();
    ...
    for (var i = 0; i < n; i++) calloc.free(names.ref.items[i]);
    calloc.free(names.ref.items); calloc.free(names);

Every string is freed through the pointer read back from the array, and
leak_check() proves nothing is left. C reads the array too: qsort sorts it
with strcmp through a callback.

Run: python examples/seed_char_array.py
"""

from __future__ import annotations

import ctypes

import rsalloc
from rsalloc import Int32, Pointer, Struct, Uint8, calloc, free, leak_check, to_native_utf8


class Names(Struct):
    items: Pointer[Pointer[Uint8]]
    count: Int32


libc = ctypes.CDLL(None)
CMP = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p))
libc.qsort.argtypes = [Pointer[Pointer[Uint8]], ctypes.c_size_t, ctypes.c_size_t, CMP]
libc.qsort.restype = None
libc.strcmp.argtypes = [ctypes.c_char_p, ctypes.c_char_p]


@CMP
def by_strcmp(a: ctypes._Pointer[ctypes.c_char_p], b: ctypes._Pointer[ctypes.c_char_p]) -> int:
    return int(libc.strcmp(a[0], b[0]))


def main() -> None:
    words = ["pear", "äpfel", "fig", "banana", "cherry"]
    with leak_check():
        names = calloc(Names)
        names.ref.items = calloc(Pointer[Uint8], len(words))
        names.ref.count = len(words)
        for i, w in enumerate(words):
            names.ref.items[i] = to_native_utf8(w)

        items = names.ref.items
        n = names.ref.count
        libc.qsort(items, n, rsalloc.sizeof(Pointer[Uint8]), by_strcmp)
        print("sorted by C:", [items[i].to_str() for i in range(n)])

        for i in range(n):
            free(names.ref.items[i])
        free(names.ref.items)
        free(names)
    print("leak_check: nothing left;", rsalloc.stats().live_count, "live")


if __name__ == "__main__":
    main()
