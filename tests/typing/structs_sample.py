"""Ordinary struct use that mypy --strict must accept (DESIGN §2a, typing)."""

from __future__ import annotations

import ctypes
from typing import Literal

from typing_extensions import assert_type

import rsalloc
from rsalloc import Array, Float64, Int8, Int32, Pointer, Struct, Uint8, Union, calloc, free, malloc, to_native_utf8


class AuthInfo(Struct):
    appKey: Pointer[Int8]
    accid: Pointer[Int8]
    token: Pointer[Int8]


class Point(Struct):
    x: Int32
    y: Float64
    flags: Array[Uint8, Literal[4]]


class Number(Union):
    i: Int32
    d: Float64


class Node(Struct):
    value: Int32
    next: Pointer[Node]


def auth_info(key: str) -> str:
    p = malloc(AuthInfo)
    assert_type(p, Pointer[AuthInfo])
    info = p.ref
    assert_type(info, AuthInfo)
    info.appKey = to_native_utf8(key)  # a Pointer[Uint8] into a Pointer[Int8] field: C converts
    info.accid = None
    info.token = 0
    got = p.ref.appKey
    assert_type(got, Pointer[Int8])
    text = got.cast(Uint8).to_str()
    free(p.ref.appKey)
    free(p)
    return text


def points() -> int:
    p = calloc(Point, 2)
    p.ref.x = 5
    n: int = p.ref.x
    y: float = p[1].y
    p[1].y = 2
    flags = p.ref.flags
    assert_type(flags, Pointer[Uint8])
    flags[0] = 1
    p.ref.flags = [1, 2, 3, 4]
    u = calloc(Number)
    u.ref.d = 1.5
    k: int = u.ref.i
    size: int = rsalloc.sizeof(Point) + rsalloc.offsetof(Point, "y")
    ct: type[ctypes.Structure | ctypes.Union] = Point.ctype
    free(u)
    free(p)
    return n + int(y) + k + size + ctypes.sizeof(ct)


def linked() -> int:
    nodes = calloc(Node, 2)
    nodes[0].next = nodes + 1
    nodes[1].value = 7
    nxt = nodes[0].next
    assert_type(nxt, Pointer[Node])
    value = nxt.ref.value if nxt else 0
    free(nodes)
    return value


def ctypes_arguments() -> int:
    libc = ctypes.CDLL(None)
    strlen = libc.strlen
    strlen.argtypes = [ctypes.c_char_p]
    strlen.restype = ctypes.c_size_t
    s = to_native_utf8("four")
    arg = Pointer[Uint8].from_param(s)
    n: int = strlen(s)
    free(s)
    return n + (arg is None)
