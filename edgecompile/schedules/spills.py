"""Which kernels of a built module spill vector registers to the stack inside a loop.

A register tile that does not fit the target's vector registers still compiles: LLVM spills
accumulators (or operands) to the stack and reloads them on every reduction step, which costs
about 2x. This reads the assembly TVM's own LLVM emits for the module (the code the library
really holds) and counts, per kernel, the vector loads and stores addressing a stack slot inside
an innermost loop.

TVM emits its assembly without LLVM's verbose comments (no ``// 16-byte Folded Spill``), so a
spill is recognised by its shape: a whole vector register (q/d on ARM, xmm/ymm/zmm on x86)
stored to and loaded from one stack slot, the stack pointer (or a register just set from it)
plus a constant, which is how LLVM addresses a spill slot after frame lowering; on x86 a reload
may be folded into an arithmetic op. A stack array (the padded window a conv copies next to its
tile) is filled by stores nothing reloads whole, and read by scalar broadcasts: neither counts.
Saves of callee-saved registers sit in the prologue and epilogue, outside every loop. A loop is
a branch label and the last branch back to it below, holding vector arithmetic; an innermost
loop holds no other loop.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

# One assembly line: an optional label, or a tab-indented instruction.
_LABEL = re.compile(r"^([.\w$]+):")
_FUNCTION_TYPE = re.compile(r"^\s*\.type\s+([.\w$]+)\s*,\s*[@%]function")
_LOCAL_BRANCH_TARGET = re.compile(r"(\.LBB[\w]+)\s*$")

# AArch64: ldr/str/ldp/stp/ldur/stur of q or d registers at sp (or x29) + constant.
_A64_STACK = re.compile(
    r"^\s*(ldr|str|ldp|stp|ldur|stur)\s+([qd])\d+\s*,\s*(?:[qd]\d+\s*,\s*)?"
    r"\[(?:sp|x29)(?:\s*,\s*#(-?\d+))?\]"
)
# 32-bit ARM: vldr/vstr d (``[base, #off]``), vld1/vst1 (``{list}, [base]``) and vldm/vstm
# (``base, {list}``), based on sp or on a register just set to sp + constant (a q-register
# spill goes through ``add rN, sp, #off``).
_ARM_SINGLE = re.compile(r"^\s*v(ldr|str)\s+d\d+\s*,\s*\[\s*(\w+)(?:\s*,\s*#(-?\d+))?\]")
_ARM_LIST = re.compile(r"^\s*v(ld1|st1)\.\d+\s+\{([^}]*)\}\s*,\s*\[\s*(\w+)[^\]]*\]$")
_ARM_MULTIPLE = re.compile(r"^\s*v(ldm|stm)\w*\s+(\w+)\s*,\s*\{([^}]*)\}")
_ARM_SP_DERIVED = re.compile(r"^\s*(?:add|mov)\s+(r\d+|ip|lr|fp)\s*,\s*sp\b(?:\s*,\s*#(\d+))?")
_ARM_WRITES = re.compile(r"^\s*[a-z][\w.]*\s+(r\d+|ip|lr|fp)\s*,")
# x86 (AT&T): an xmm/ymm/zmm register and a ``off(%rsp)`` operand; broadcasts read scalars.
_X86_STACK = re.compile(r"(-?\d*)\(%(rsp|rbp)\)")
_X86_VECTOR_REGISTER = re.compile(r"%[xyz]mm\d+")
_X86_STORE = re.compile(r"^\s*v?mov\w*\s+%[xyz]mm\d+\s*,")
_X86_SCALAR_READ = re.compile(r"broadcast|\{1to\d+\}|^\s*v?movs[sd]\b|ss\s|sd\s")

# Vector arithmetic: a loop without any is no kernel's hot loop (LLVM lays cold error paths out
# below the code they branch back to, which looks like a loop).
_VECTOR_ARITHMETIC = re.compile(
    r"^\s*(?:(?!ld|st|mov|dup|ins|umov)[a-z]\w*\s+v\d+\.\d*[bhsd]\b"  # AArch64
    r"|v(?!ld|st|mov|dup|push|pop)[a-z]\w*(?:\.\w+)*\s+[qd]\d+"  # 32-bit ARM
    r"|(?!v?mov)v?[a-z]\w*p[sd]\s)"  # x86 packed
)

_KERNEL_PREFIX = "__tvm_ffi_"
_KERNEL_SUFFIX = "_compute_"


@dataclass(frozen=True)
class KernelSpills:
    """A kernel's stack traffic of vector registers: inside its innermost loops (the hot
    code) and anywhere in a loop."""

    kernel: str
    innermost: int
    in_loops: int

    @property
    def spills(self) -> bool:
        """Whether the kernel spills in its hot (innermost) loop."""
        return self.innermost > 0


def kernel_name(symbol: str) -> str:
    """The fused PrimFunc a function symbol belongs to: TVM wraps each kernel as
    ``__tvm_ffi_<name>`` and, when it runs in parallel, moves its body to ``<name>_compute_``
    (whose parallel lambdas are local symbols right after it)."""
    name = symbol.removeprefix(_KERNEL_PREFIX)
    return name.removesuffix(_KERNEL_SUFFIX)


def asm_spills(asm: str, arch: str) -> dict[str, KernelSpills]:
    """Per kernel of an LLVM assembly listing for ``arch`` (a triple's first part: ``aarch64``,
    ``armv7l``, ``x86_64``, ...), its vector spills in loops. TVM's runtime helpers and
    compiler-rt's (``__*``) are left out."""
    stack_accesses = _parser(arch)
    innermost: dict[str, int] = defaultdict(int)
    in_loops: dict[str, int] = defaultdict(int)
    for kernel, lines in _functions(asm.splitlines()):
        if kernel.startswith("__"):
            continue
        innermost.setdefault(kernel, 0)
        in_loops.setdefault(kernel, 0)
        accesses = stack_accesses(lines)
        stored = {slot for _, store, slots in accesses if store for slot in slots}
        loaded = {slot for _, store, slots in accesses if not store for slot in slots}
        spill_slots = stored & loaded
        loops = [
            (start, end)
            for start, end in _loops(lines)
            if any(_VECTOR_ARITHMETIC.match(line) for line in lines[start : end + 1])
        ]
        inner = [loop for loop in loops if not any(_nested(other, loop) for other in loops)]
        for index, _, slots in accesses:
            if not slots & spill_slots:
                continue
            if any(start <= index <= end for start, end in loops):
                in_loops[kernel] += 1
            if any(start <= index <= end for start, end in inner):
                innermost[kernel] += 1
    return {name: KernelSpills(name, innermost[name], in_loops[name]) for name in innermost}


def module_spills(executable: Any, target: Any) -> dict[str, KernelSpills]:
    """:func:`asm_spills` of a built module (a Relax VM executable or a runtime module) for
    the TVM ``target`` it was built for: the assembly of each of its LLVM modules."""
    import tvm

    from edgecompile.targets import host_triple

    # A Relax VM executable holds its kernels' module as ``mod``; a runtime module is one.
    module = executable if isinstance(executable, tvm.runtime.Module) else executable.mod
    arch = (str(target.attrs.get("mtriple", "")) or host_triple()).split("-")[0]
    result: dict[str, KernelSpills] = {}
    for llvm_module in _llvm_modules(module):
        result.update(asm_spills(str(llvm_module.inspect_source("asm")), arch))
    return result


def module_assembly(executable: Any) -> str:
    """The assembly of every LLVM module of a built module (as :func:`module_spills` reads)."""
    import tvm

    module = executable if isinstance(executable, tvm.runtime.Module) else executable.mod
    return "\n".join(str(llvm.inspect_source("asm")) for llvm in _llvm_modules(module))


def kernel_assembly(asm: str) -> dict[str, str]:
    """Each kernel's assembly (its parallel lambdas included), by kernel name."""
    found: dict[str, list[str]] = defaultdict(list)
    for kernel, lines in _functions(asm.splitlines()):
        found[kernel].extend(lines)
    return {kernel: "\n".join(lines) for kernel, lines in found.items()}


def _llvm_modules(module: Any) -> list[Any]:
    found = [module] if str(module.kind) == "llvm" else []
    for imported in module.imports:
        found.extend(_llvm_modules(imported))
    return found


def _functions(lines: list[str]) -> list[tuple[str, list[str]]]:
    """The listing cut into functions, each under the kernel it belongs to: a local function
    (a parallel lambda) belongs to the global one before it."""
    functions: list[tuple[str, list[str]]] = []
    kernel, current, pending = "", [], ""
    for line in lines:
        typed = _FUNCTION_TYPE.match(line)
        if typed:
            pending = typed.group(1)
            continue
        label = _LABEL.match(line)
        if label and label.group(1) == pending:
            if current:
                functions.append((kernel, current))
            if not pending.startswith(".L"):
                kernel = kernel_name(pending)
            current, pending = [], ""
            continue
        current.append(line)
    if current:
        functions.append((kernel, current))
    return [(name, body) for name, body in functions if name]


def _loops(lines: list[str]) -> list[tuple[int, int]]:
    """``(label line, last back-branch line)`` of every loop in one function."""
    labels: dict[str, int] = {}
    loops: dict[str, int] = {}
    for index, line in enumerate(lines):
        label = _LABEL.match(line)
        if label:
            labels[label.group(1)] = index
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith((".", "//", "@", "#")):
            continue
        target = _LOCAL_BRANCH_TARGET.search(stripped)
        if target and target.group(1) in labels:
            loops[target.group(1)] = index
    return [(labels[name], end) for name, end in loops.items()]


def _nested(inner: tuple[int, int], outer: tuple[int, int]) -> bool:
    return inner != outer and outer[0] <= inner[0] and inner[1] <= outer[1]


# One whole-vector stack access: (line, is a store, the stack slots it touches).
_Access = tuple[int, bool, frozenset[tuple[str, int]]]


def _parser(arch: str) -> Any:
    if arch in ("aarch64", "arm64", "aarch64_be"):
        return _aarch64_accesses
    if arch.startswith(("arm", "thumb")):
        return _arm_accesses
    return _x86_accesses


def _slots(base: str, offset: int, registers: int, size: int) -> frozenset[tuple[str, int]]:
    return frozenset((base, offset + size * i) for i in range(registers))


def _aarch64_accesses(lines: list[str]) -> list[_Access]:
    accesses = []
    for index, line in enumerate(lines):
        found = _A64_STACK.match(line)
        if found:
            mnemonic, kind, offset = found.groups()
            size = 16 if kind == "q" else 8
            pair = 2 if mnemonic in ("ldp", "stp") else 1
            slots = _slots("sp", int(offset or 0), pair, size)
            accesses.append((index, mnemonic.startswith("st"), slots))
    return accesses


def _arm_accesses(lines: list[str]) -> list[_Access]:
    stack_bases: dict[str, int] = {"sp": 0}  # register -> its offset from sp
    accesses = []
    for index, line in enumerate(lines):
        if _LABEL.match(line):
            stack_bases = {"sp": 0}  # a join: what a register holds is unknown here
            continue
        single = _ARM_SINGLE.match(line)
        listed = _ARM_LIST.match(line)
        multiple = _ARM_MULTIPLE.match(line)
        if single and single.group(2) in stack_bases:
            offset = stack_bases[single.group(2)] + int(single.group(3) or 0)
            accesses.append((index, single.group(1) == "str", _slots("sp", offset, 1, 8)))
        elif listed and listed.group(3) in stack_bases and "[" not in listed.group(2):
            count = len(listed.group(2).split(","))
            slots = _slots("sp", stack_bases[listed.group(3)], count, 8)
            accesses.append((index, listed.group(1) == "st1", slots))
        elif multiple and multiple.group(2) in stack_bases:
            count = len(multiple.group(3).split(","))
            slots = _slots("sp", stack_bases[multiple.group(2)], count, 8)
            accesses.append((index, multiple.group(1) == "stm", slots))
        elif derived := _ARM_SP_DERIVED.match(line):
            stack_bases[derived.group(1)] = int(derived.group(2) or 0)
        elif written := _ARM_WRITES.match(line):
            stack_bases.pop(written.group(1), None)
    return accesses


def _x86_accesses(lines: list[str]) -> list[_Access]:
    accesses = []
    for index, line in enumerate(lines):
        found = _X86_STACK.search(line)
        if not found or not _X86_VECTOR_REGISTER.search(line) or _X86_SCALAR_READ.search(line):
            continue
        slot = frozenset({(found.group(2), int(found.group(1) or 0))})
        accesses.append((index, bool(_X86_STORE.match(line)) and line.rstrip().endswith(")"), slot))
    return accesses
