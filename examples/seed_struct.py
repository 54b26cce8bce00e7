"""A C struct of three strings, written as a Dart package:ffi user writes it:

    final class AuthInfo extends Struct {
      external Pointer<Utf8> appKey;
      external Pointer<Utf8> accid;
      external Pointer<Utf8> token;
    }

    final info = calloc<AuthInfo>();
    info.ref.appKey = "45c6...".toNativeUtf8();
    ...
    calloc.free(info.ref.appKey); ...; calloc.free(info);

The strings are freed through the pointers read back from the struct, and
leak_check() proves nothing is left. C sees the struct too: strlen through
each field, and the whole struct through a `POINTER(AuthInfo.ctype)`.

Run: python examples/seed_struct.py
"""

from __future__ import annotations

import ctypes

import rsalloc
from rsalloc import Int8, Pointer, Struct, calloc, free, leak_check, to_native_utf8


class AuthInfo(Struct):
    appKey: Pointer[Int8]
    accid: Pointer[Int8]
    token: Pointer[Int8]


libc = ctypes.CDLL(None)
libc.strlen.argtypes = [ctypes.c_char_p]
libc.strlen.restype = ctypes.c_size_t


def main() -> None:
    with leak_check():
        info = calloc(AuthInfo)
        info.ref.appKey = to_native_utf8("45c6af3c98409b18a84451215d0bdd6e")
        info.ref.accid = to_native_utf8("user-42")
        info.ref.token = to_native_utf8("tökén")

        print("sizeof(AuthInfo):", rsalloc.sizeof(AuthInfo), "offsets:",
              [rsalloc.offsetof(AuthInfo, f) for f in ("appKey", "accid", "token")])
        print("appKey:", info.ref.appKey.cast(rsalloc.Uint8).to_str())
        print("strlen:", [libc.strlen(getattr(info.ref, f)) for f in ("appKey", "accid", "token")])
        as_c = ctypes.cast(info, ctypes.POINTER(AuthInfo.ctype)).contents
        print("ctypes sees accid:", as_c.accid.decode())

        free(info.ref.appKey)
        free(info.ref.accid)
        free(info.ref.token)
        free(info)
    print("leak_check: nothing left;", rsalloc.stats().live_count, "live")


if __name__ == "__main__":
    main()
