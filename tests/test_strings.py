"""to_native_utf8 / to_native_utf16 and Pointer.to_str (DESIGN §3)."""

from __future__ import annotations

import ctypes
import sys

import pytest

import rsalloc
from rsalloc import Int32, Uint8, Uint16, calloc, free, malloc, to_native_utf8, to_native_utf16

from conftest import unchanged


@pytest.mark.parametrize("s", ["", "hello", "héllo wörld", "日本語", "emoji 🐍"])
def test_utf8_round_trip_through_libc(libc, s):
    p = to_native_utf8(s)
    encoded = s.encode()
    assert p.type is Uint8 and p.count == len(encoded) + 1 and p[-1] == 0
    assert libc.strlen(p) == len(encoded)
    assert ctypes.string_at(p.address) == encoded
    assert p.to_str() == s
    free(p)


def test_utf8_from_any_allocator():
    p = to_native_utf8("abc", calloc)
    assert p.allocator is calloc
    free(p)


def test_embedded_nul_is_a_value_error():
    with unchanged():
        with pytest.raises(ValueError):
            to_native_utf8("a\0b")
        with pytest.raises(ValueError):
            to_native_utf16("a\0b")


def test_encoding_errors():
    lone = "a\ud800b"
    with unchanged():
        with pytest.raises(UnicodeEncodeError):
            to_native_utf8(lone)
    p = to_native_utf8(lone, errors="replace")
    assert p.to_str() == "a?b"
    free(p)
    p = to_native_utf8(lone, errors="surrogatepass")
    assert p.to_str(errors="surrogatepass") == lone
    with pytest.raises(UnicodeDecodeError):
        p.to_str()
    assert p.to_str(errors="replace").startswith("a")
    free(p)


@pytest.mark.parametrize("s", ["", "wide", "ünï", "𝄞 clef"])
def test_utf16_native_order(s):
    p = to_native_utf16(s)
    raw = s.encode("utf-16-le" if sys.byteorder == "little" else "utf-16-be")
    assert p.type is Uint16 and p.count == len(raw) // 2 + 1 and p[-1] == 0
    assert p.read_bytes(len(raw)) == raw
    assert p.to_str() == s
    free(p)


def test_to_str_stops_at_nul_or_end_or_length():
    p = malloc.allocate(6)
    p.write_bytes(b"ab\0cde")
    assert p.to_str() == "ab"
    assert p.to_str(length=6) == "ab\0cde"
    assert (p + 3).to_str() == "cde"  # no NUL: stops at the end of the block
    with unchanged(p):
        with pytest.raises(IndexError):
            p.to_str(length=7)
    free(p)


def test_to_str_needs_a_character_type():
    p = calloc(Int32, 2)
    with pytest.raises(TypeError):
        p.to_str()
    assert p.cast(Uint8).to_str() == ""
    free(p)


def test_foreign_c_string_of_unknown_length(libc):
    raw = libc.strdup("from C".encode())
    view = rsalloc.Pointer.from_address(raw, Uint8)
    assert view.to_str() == "from C"
    libc.free(raw)


def test_non_str_is_a_type_error():
    with pytest.raises(TypeError):
        to_native_utf8(b"bytes")


class HandsBack:
    """An allocator-like object (duck-typed `allocate`) returning a chosen Pointer."""

    def __init__(self, p: rsalloc.Pointer) -> None:
        self.p = p

    def allocate(self, nbytes: int) -> rsalloc.Pointer:
        return self.p


def test_a_duck_typed_allocator_cannot_make_a_string_overflow_its_block():
    small = malloc.allocate(2)
    small.write_bytes(b"ok")
    with pytest.raises(IndexError):
        to_native_utf8("longer than two bytes", HandsBack(small))
    assert small.read_bytes() == b"ok"
    free(small)
    with pytest.raises(rsalloc.UseAfterFreeError):
        to_native_utf16("x", HandsBack(small))
    fits = malloc.allocate(4)
    p = to_native_utf8("abc", HandsBack(fits))
    assert p.to_str() == "abc" and p.address == fits.address
    free(fits)
