#!/usr/bin/env python3
"""Every value rsalloc's bindings hand Python is made by a checked
constructor (src/py/checked.rs): PyO3 turns a returned int, float, str,
bytes, tuple or list into an object with constructors that panic when
CPython is out of memory, and the panic's own exception may then need
memory it cannot get (an abort). This check reads the bindings' source and
lists every `#[pymethods]` method, `#[pyfunction]` and `#[pyo3(get)]` field
whose Rust type PyO3 would convert that way. Exit status 1 when it finds one.

Methods whose result CPython receives as a C value (`__len__`, `__hash__`,
`__bool__`, ...) are not conversions and are not listed. Explicit calls of
the panicking constructors are clippy's to refuse (clippy.toml).

Usage: scripts/check_conversions.py [ROOT]"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# Slots whose Rust result becomes a C value or None, never a new object.
C_VALUED = {
    "__len__", "__hash__", "__bool__", "__contains__", "__traverse__", "__clear__",
    "__getbuffer__", "__releasebuffer__", "__set__", "__delete__", "__setitem__",
    "__delitem__", "__setattr__", "__delattr__", "__init__",
}
PANICKY = re.compile(
    r"\b(u8|u16|u32|u64|u128|usize|i8|i16|i32|i64|i128|isize|f32|f64|String|str|Vec|Cow|char)\b"
    r"|\((?!\))"  # a tuple (not the unit type)
)


def signatures(text: str):
    """(kind, name, return type or field type, line) of each exposed item."""
    lines = text.split("\n")
    depth = 0
    pymethods_depth = None  # brace depth inside a #[pymethods] impl
    pending_attr = None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("#[pymethods"):
            pending_attr = "pymethods"
        elif stripped.startswith("#[pyfunction"):
            pending_attr = "pyfunction"
        elif stripped.startswith("#[pyo3(get") or stripped.startswith("#[pyo3(get,"):
            m = re.match(r"\s*(?:pub(?:\([^)]*\))?\s+)?(\w+)\s*:\s*([^,]+),?", lines[i + 1])
            if m:
                yield "field", m.group(1), m.group(2).strip(), i + 2
        if pending_attr and re.match(r"\s*(pub(\([^)]*\))?\s+)?(unsafe\s+)?fn\s", line):
            sig = line
            j = i
            while "{" not in sig and ";" not in sig:
                j += 1
                sig += " " + lines[j].strip()
            name = re.search(r"fn\s+(\w+)", sig).group(1)
            ret = sig.split("{")[0]
            ret = ret.split(")")
            m = re.search(r"\)\s*->\s*(.*?)\s*(where\b.*)?$", sig.split("{")[0])
            yield pending_attr, name, (m.group(1) if m else "()"), i + 1
            if pending_attr == "pyfunction":
                pending_attr = None
        if pending_attr == "pymethods" and re.match(r"\s*impl\b", line):
            pymethods_depth = depth + 1
            pending_attr = "method"
        opens, closes = line.count("{"), line.count("}")
        depth += opens - closes
        if pymethods_depth is not None and depth < pymethods_depth:
            pymethods_depth = None
            pending_attr = None
        i += 1


# A `&str` name handed to one of these becomes a str by PyO3's panicking
# constructor on every call; `checked::name!("x")` makes it once, checked.
LITERAL_NAME = re.compile(
    r"\.(getattr|hasattr|setattr|call_method0|call_method1|call_method|import|set_item|get_item)"
    r"\(\s*\"[^\"]*\""
)


def main(root: Path) -> int:
    found = []
    for path in sorted((root / "src" / "py").rglob("*.rs")):
        text = path.read_text()
        for n, line in enumerate(text.split("\n"), 1):
            if line.strip().startswith("//"):
                continue
            if LITERAL_NAME.search(line):
                found.append(f"{path.relative_to(root)}:{n}: a literal name: {line.strip()}")
            if re.search(r"#\[pyclass\([^)]*\bget_all\b", line):
                found.append(f"{path.relative_to(root)}:{n}: get_all (PyO3 converts the fields)")
        for kind, name, ty, line in signatures(text):
            if kind in ("method", "pyfunction") and name in C_VALUED:
                continue
            # Text<...> and Int are the checked constructors' own results.
            inner = re.sub(r"\bText<[^>]*>", "Text", ty)
            m = re.fullmatch(r"PyResult<(.*)>", inner)
            if m:
                inner = m.group(1)
            if PANICKY.search(inner):
                found.append(f"{path.relative_to(root)}:{line}: {kind} {name} -> {ty}")
    for f in found:
        print(f)
    print(f"unchecked conversions: {len(found)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent)))
