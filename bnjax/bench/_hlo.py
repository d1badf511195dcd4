"""Kernel and memory-pass counts read from a compiled program's optimized HLO text
(``jax.jit(f).lower(...).compile().as_text()``), so they work on any backend.

On a GPU a small model's step is bound by how many kernels it launches: XLA launches one per *fusion
instruction* (``%name = ... fusion(...), kind=kLoop|kInput|kOutput|kCustom``) and one per unfused instruction
that does work (a ``dot``, ``copy``, ``custom-call``, ...; everything but ``parameter``, ``get-tuple-element``,
``tuple``, ``constant`` and ``bitcast``). A memory-bound layer is bound by how many times it reads and writes
its big arrays.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["array_passes", "computations", "fusion_counts", "opcode"]

_HEADER = re.compile(r"^(?:ENTRY )?%(\S+) .*\{$")
_FREE = frozenset({"parameter", "get-tuple-element", "tuple", "constant", "bitcast"})
_ARRAY = re.compile(r"\b[a-z]+\d*\[([0-9,]*)\]")
# Computations a loop body runs as part of itself; a fusion's `calls=` and a reduction's `to_apply=` run inside
# one kernel and are not followed.
_NESTED = re.compile(r"(?:body|condition|true_computation|false_computation)=%([^\s,]+)")
_CALLED = re.compile(r"to_apply=%([^\s,]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


def computations(hlo: str) -> dict[str, list[str]]:
    """Instruction lines of each computation of an HLO module text, by computation name (the entry first
    under its own name; see :func:`entry_name`)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        head = _HEADER.match(line)
        if head:
            current = head.group(1)
            out[current] = []
        elif line.startswith("}"):
            current = None
        elif current is not None and " = " in line:
            out[current].append(line)
    return out


def entry_name(hlo: str) -> str:
    """The name of the module's entry computation."""
    m = re.search(r"^ENTRY %(\S+) ", hlo, re.M)
    if m is None:
        raise ValueError("no ENTRY computation in this HLO text")
    return m.group(1)


def _parts(line: str) -> tuple[str, str, str, str]:
    """``(name, type, opcode, operands)`` of one instruction line (``("", "", "", "")`` if it is none)."""
    lhs, sep, rest = line.strip().removeprefix("ROOT ").partition(" = ")
    if not sep:
        return "", "", "", ""
    end = _closing(rest) + 1 if rest.startswith("(") else len(rest.partition(" ")[0])
    typ, call = rest[:end], rest[end:].lstrip()
    m = re.match(r"([a-z][a-z0-9-]*)\(", call)
    if m is None:
        return lhs.lstrip("%"), typ, "", ""
    args = call[m.end() - 1:]
    return lhs.lstrip("%"), typ, m.group(1), args[1:_closing(args)]


def _closing(text: str) -> int:
    """Index of the parenthesis that closes the one ``text`` starts with."""
    depth = 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return i
    return len(text) - 1


def opcode(line: str) -> str:
    """The opcode of one HLO instruction line (``"fusion"``, ``"dot"``, ...), or ``""`` if none is found."""
    return _parts(line)[2]


def _works(line: str) -> bool:
    op = opcode(line)
    return bool(op) and op not in _FREE


def _is_fusion(line: str) -> bool:
    return opcode(line) == "fusion" and "kind=k" in line


def _loop_bodies(comps: dict[str, list[str]], trip_count: int) -> list[str]:
    trip = f'"known_trip_count":{{"n":"{trip_count}"}}'
    bodies = []
    for lines in comps.values():
        for line in lines:
            m = re.search(r"body=%([^\s,]+)", line)
            if m and opcode(line) == "while" and trip in line:
                bodies.append(m.group(1))
    return bodies


def _reachable(comps: dict[str, list[str]], roots: list[str]) -> list[str]:
    """``roots`` and the computations they run through while loops, calls and conditionals."""
    seen: list[str] = []
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.append(name)
        for line in comps[name]:
            todo += _NESTED.findall(line)
            if opcode(line) in ("call", "async-start"):
                todo += _CALLED.findall(line)
            for group in _BRANCHES.findall(line):
                todo += [b.strip().lstrip("%") for b in group.split(",")]
    return seen


def fusion_counts(hlo: str, trip_count: int | None = None) -> dict[str, Any]:
    """Kernel counts of a compiled program.

    Returns ``{"fusions"}``: fusion instructions in the whole program (a fusion's own computation holds none);
    with ``trip_count`` also, over the body of each ``while`` loop that runs ``trip_count`` times (a
    ``lax.scan`` of that many steps) and the loops, calls and conditionals nested in it: ``loop_fusions``
    (fusion instructions), ``loop_ops`` (every instruction that launches work, fusions included) and ``loops``
    (how many such loops were found; 0 leaves both counts at 0).
    """
    comps = computations(hlo)
    out: dict[str, Any] = {"fusions": sum(_is_fusion(line) for lines in comps.values() for line in lines)}
    if trip_count is not None:
        bodies = _loop_bodies(comps, trip_count)
        lines = [line for name in _reachable(comps, bodies) for line in comps[name]]
        out |= {"loops": len(bodies), "loop_fusions": sum(map(_is_fusion, lines)), "loop_ops": sum(map(_works, lines))}
    return out


def _sizes(type_text: str) -> list[int]:
    """Element counts of the arrays in an HLO type (``f32[4,8]{1,0}`` -> [32]; a tuple type -> one per array)."""
    out = []
    for dims in _ARRAY.findall(type_text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        out.append(n)
    return out


def array_passes(hlo: str, size: int) -> dict[str, int]:
    """Passes over arrays of ``size`` elements made by the entry computation's instructions that launch work.

    ``reads``: their operands of that size; ``writes``: their outputs of that size (each array of a tuple
    output); ``kernels``: how many of them read or write one. For a layer on ``(N, C)`` arrays and
    ``size = N * C``, ``reads + writes`` is its memory traffic in units of one ``(N, C)`` array.
    """
    comps = computations(hlo)
    lines = comps[entry_name(hlo)]
    types = {name: typ for name, typ, _, _ in map(_parts, lines)}
    reads = writes = kernels = 0
    for line in lines:
        _, typ, op, args = _parts(line)
        if not op or op in _FREE:
            continue
        r = sum(size in _sizes(types.get(o, "")) for o in re.findall(r"%([\w.-]+)", args))
        w = _sizes(typ).count(size)
        reads, writes, kernels = reads + r, writes + w, kernels + bool(r or w)
    return {"reads": reads, "writes": writes, "kernels": kernels}
