"""Bytes moved by the collectives of a compiled XLA program, read from its HLO text.

    from ssl_jax.hlo_collectives import collective_bytes, ideal_bytes
    stats = collective_bytes(jitted.lower(*args).compile().as_text())

(`collective_report` does both for a compiled train step and its mesh: the benchmarks and
`python -m ssl_jax.compile` use it.)

`collective_bytes` parses the post-optimisation, SPMD-partitioned HLO (`compiled.as_text()`:
one program per device, so every shape in it is a per-device shape) and sums, per kind of
collective, the size of ONE DEVICE'S FULL BUFFER of the op:

    all-reduce          the operand (= the result: the buffer being summed), e.g. a full
                        gradient under data parallelism
    all-gather          the result, i.e. the gathered array (a full weight under FSDP)
    reduce-scatter      the operand, i.e. the array before scattering (a full gradient)
    all-to-all          the operand (= the result size)
    collective-permute  the operand (= what one device sends)

So an all-reduce of a gradient of P bytes counts P, and FSDP's all-gather of a weight of
P bytes plus the reduce-scatter of its gradient count 2P. This "buffer" convention is what
`ideal_bytes` uses too, so measured/ideal is meaningful. It is NOT the traffic on the links:
a bandwidth-optimal (ring) all-reduce over n devices sends 2(n-1)/n x the buffer per device,
an all-gather or reduce-scatter (n-1)/n x, an all-to-all (n-1)/n x, a permute 1x. That
estimate is returned too, as `link_bytes`, from each op's replica-group size (under it an
all-reduce costs the same as a reduce-scatter + all-gather of the same buffer).

Counting rules:
- Each collective is counted once: the synchronous op (`all-reduce`), or the `-start` half
  of an asynchronous pair (`all-gather-start`), never the `-done`. Collectives that XLA
  wraps in a generic `async-start` (`calls=%wrapped_reduce_scatter`...) are counted once,
  from the op inside the wrapped computation.
- Combined ops (XLA's combiner passes merge several all-reduces into one with a tuple
  shape) count as one op whose bytes are the sum over the tuple.
- TPU: an all-reduce inside a reduce-scatter fusion (a kCustom fusion whose collective
  emitter is `AllReduceScatterFusion`: GSPMD's gradient of an FSDP-split weight prints as a
  full-size all-reduce and a dynamic-slice to the device's shard) is counted as the
  reduce-scatter it runs as: an explicit `lax.psum_scatter` compiles to the same emitter and
  algorithm. Counted as an all-reduce it showed hsdp at twice its real gradient traffic.
- TPU: the async collective fusion clones a collective (same opcode, shape and channel_id)
  into the computations of the compute it overlaps and of its AsyncCollectiveDone; only the
  copy in the AsyncCollectiveStart computation is counted.
- Counts are static: an op inside a while loop's body is counted once, not per iteration.
  `collective_bytes_per_step` counts each op as often as a step runs it (a loop body times
  its trip count, read from the loop's condition); `collective_report` gives both.
- Sizes use every HLO element type (pred and 8-bit types 1 byte, 4-bit types 1/2, ...);
  layouts (`{3,2,1,0}`, tiling `{1,0:T(8,128)}`) and dynamic bounds (`[<=8]`) are ignored.
"""
from __future__ import annotations

import math
import re

import numpy as np

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

# Bits per element of every HLO primitive type.
_BITS = {
    "pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16,
    "s32": 32, "u32": 32, "s64": 64, "u64": 64, "f16": 16, "bf16": 16, "f32": 32, "f64": 64,
    "c64": 64, "c128": 128, "f4e2m1fn": 4, "f8e8m0fnu": 8, "token": 0,
}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\]")
# `%name = <shape> <opcode>(` ; the shape is parsed separately (tuples contain spaces).
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$")
_COMMENT = re.compile(r"/\*.*?\*/")


def dtype_bits(dtype: str) -> int:
    """Bits per element of an HLO element type ('f32', 'bf16', 'pred', 'f8e4m3fn', ...)."""
    if dtype in _BITS:
        return _BITS[dtype]
    if dtype.startswith("f8"):
        return 8
    raise ValueError(f"unknown HLO element type {dtype!r}")


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape: an array `f32[3,3,64,64]{3,2,1,0}` or a (nested) tuple of
    arrays, summed over its elements (sub-byte types rounded up per array)."""
    total = 0
    for dtype, dims in _ARRAY.findall(_COMMENT.sub("", shape)):
        n = 1
        for d in dims.split(","):
            d = d.strip().lstrip("<=")
            if d:
                n *= int(d)
        total += (n * dtype_bits(dtype) + 7) // 8
    return total


def split_tuple(shape: str) -> list[str]:
    """Top-level elements of a tuple shape '(a, (b, c), d)'; [shape] if it is not a tuple."""
    shape = _COMMENT.sub("", shape).strip()
    if not shape.startswith("("):
        return [shape]
    parts, depth, start = [], 0, 1
    for i, ch in enumerate(shape):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:  # the closing parenthesis of the tuple
                parts.append(shape[start:i])
                break
        elif ch == "," and depth == 1:
            parts.append(shape[start:i])
            start = i + 1
    return [p.strip() for p in parts if p.strip()]


def _split_shape(rest: str) -> tuple[str, str]:
    """'<shape> <opcode>(operands), attrs' -> (shape, 'opcode(operands), attrs')."""
    rest = rest.lstrip()
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
                if depth == 0:
                    return rest[:i + 1], rest[i + 1:].lstrip()
        return rest, ""
    shape, _, tail = rest.partition(" ")
    return shape, tail.lstrip()


def _operand_names(call: str) -> list[str]:
    """Names of the operands in 'opcode(%a, %b), attrs' (the text up to the matching ')')."""
    start = call.find("(")
    depth = 0
    for i in range(start, len(call)):
        if call[i] == "(":
            depth += 1
        elif call[i] == ")":
            depth -= 1
            if depth == 0:
                inner = call[start + 1:i]
                break
    else:
        inner = call[start + 1:]
    # Operands print as '%name' (or 'f32[8]{0} %name' with operand shapes on).
    return [tok.split()[-1].lstrip("%") for tok in inner.split(",") if tok.strip()]


def group_size(attrs: str) -> int | None:
    """Devices per replica group of a collective, from its `replica_groups=` attribute in
    any of XLA's spellings: explicit `{{0,1},{2,3}}`, iota `[2,4]<=[8]` (groups x size),
    mesh `mesh['a'=2,'b'=4] {'b'}`, also with `, device_ids=([2,4]T(1,0))` before the axes
    and sub-axes `'b':(2)2`. None when absent or empty (= all devices)."""
    m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\S+?)?\s*\{([^}]*)\}", attrs)
    if m:
        sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
        n = 1
        # An axis 'b', or a sub-axis 'b':(pre)size.
        for axis, sub in re.findall(r"'([^']+)'(?::\(\d+\)(\d+))?", m.group(2)):
            if sub:
                n *= int(sub)
            elif axis in sizes:
                n *= sizes[axis]
            else:
                return None
        return n
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{([^}]*)\}", attrs)
    if m:
        return len([x for x in m.group(1).split(",") if x.strip()])
    return None


def _link_factor(kind: str, n: int | None) -> float:
    if kind == "collective-permute":
        return 1.0
    if not n or n <= 1:
        return 0.0 if n == 1 else float("nan")
    return (2.0 if kind == "all-reduce" else 1.0) * (n - 1) / n


# The TPU compiler's reduce-scatter: a kCustom fusion whose collective emitter is
# (SingleInput)AllReduceScatterFusion. Its body is an all-reduce followed by a dynamic-slice to
# the device's shard (how GSPMD partitions a gradient into a split weight, and how the TPU
# combiner merges several reduce-scatters), or a reduce-scatter op (an explicit
# lax.psum_scatter); the emitter runs both as a ring reduce-scatter, so its all-reduce is one.
_RS_FUSION = re.compile(r'\bcalls=%?([^\s,]+).*"emitter":"(?:SingleInput)?AllReduceScatterFusion"')


def reduce_scatter_fusions(hlo_text: str) -> set[str]:
    """Names of the computations that the TPU compiler emits as a reduce-scatter."""
    return {m.group(1) for m in map(_RS_FUSION.search, hlo_text.splitlines()) if m}


def async_clone_ops(hlo_text: str) -> set[str]:
    """Names of the copies of an asynchronous TPU collective: the compiler's async collective
    fusion puts the collective into the computation that ends in an AsyncCollectiveStart
    custom call and clones it (same opcode, shape and channel_id) into the computations of the
    compute it overlaps and of its AsyncCollectiveDone; it runs once, so only the start's copy
    counts. (Channel ids alone do not identify a collective: distinct shard_map collectives can
    share one.)"""
    comps, _ = computations(hlo_text)
    op = re.compile(r"=\s*(.*?)\s((?:" + "|".join(KINDS) + r")(?:-start)?)\(.*\bchannel_id=(\d+)")

    def key(line):
        m, name = op.search(line), _INSTR.match(line)
        if not (m and name):
            return None, None
        return name.group(1).lstrip("%"), (m.group(2), re.sub(r"\{[^{}]*\}", "", m.group(1)), m.group(3))

    started = {key(l)[1] for lines in comps.values() if any("AsyncCollectiveStart" in l for l in lines)
               for l in lines} - {None}
    clones = set()
    for lines in comps.values():
        if any("AsyncCollectiveStart" in l for l in lines):
            continue
        for l in lines:
            name, k = key(l)
            if k in started:
                clones.add(name)
    return clones


def parse_collectives(hlo_text: str) -> list[dict]:
    """One record per collective op in the HLO text: kind, name, bytes (per the module
    docstring's convention), group size (None if unknown), the raw shape and the computation
    it is in ('' for lines outside any computation).

    An all-reduce inside a TPU reduce-scatter fusion (reduce_scatter_fusions) is recorded as the
    reduce-scatter it runs as (same operand bytes, half the link traffic of an all-reduce); the
    async collective fusion's copies of an op (async_clone_ops) are left out."""
    rs_comps, skip = reduce_scatter_fusions(hlo_text), async_clone_ops(hlo_text)
    comps, _ = computations(hlo_text)
    return [dict(r, computation=name) for name, lines in comps.items()
            for r in _computation_collectives(lines, name in rs_comps, skip)]


def _computation_collectives(lines, in_reduce_scatter: bool, skip: set) -> list[dict]:
    """parse_collectives' records of one computation's instruction lines."""
    shapes: dict[str, str] = {}
    pending = []
    for line in lines:
        m = _INSTR.match(line)
        if not m:
            continue
        name, rest = m.group(1).lstrip("%"), m.group(2)
        shape, call = _split_shape(rest)
        shapes[name] = shape
        opcode = re.match(r"([\w\-]+)\(", call)
        if not opcode:
            continue
        op = opcode.group(1)
        kind = op.removesuffix("-start")
        if kind not in KINDS or name in skip:
            continue
        # An all-reduce in a reduce-scatter fusion: its buffer is the reduce-scatter's operand.
        fused = kind == "all-reduce" and in_reduce_scatter
        pending.append(("reduce-scatter" if fused else kind, "all-reduce" if fused else op, name, shape, call))
    records = []
    for kind, op, name, shape, call in pending:
        parts = split_tuple(shape)
        n = group_size(call)
        if op == "all-gather-start":          # (operand(s), result(s))
            nbytes = shape_bytes(parts[1]) if len(parts) >= 2 else shape_bytes(shape)
        elif op == "collective-permute-start":  # (operand, result, u32[] contexts...)
            nbytes = shape_bytes(parts[0])
        elif op.removesuffix("-start") == "reduce-scatter":  # the operand(s), looked up by name
            operands = _operand_names(call)
            if operands and all(o in shapes for o in operands):
                nbytes = sum(shape_bytes(shapes[o]) for o in operands)
            elif n:                            # fallback: result x group size
                nbytes = shape_bytes(shape) * n
            else:
                raise ValueError(f"cannot size the operand of reduce-scatter {name!r}")
        else:  # all-reduce(-start; fused too), all-gather, all-to-all, collective-permute: the result
            nbytes = shape_bytes(shape)
        records.append({"kind": kind, "name": name, "bytes": nbytes, "group_size": n,
                        "shape": shape})
    return records


def collective_bytes(hlo_text: str) -> dict:
    """Per kind of collective (KINDS) and in 'total': {'count': ops, 'bytes': per-device
    buffer bytes (see the module docstring), 'link_bytes': bandwidth-optimal bytes sent per
    device (NaN if a group size could not be read)}."""
    return _sum_collectives(parse_collectives(hlo_text), {})


def _sum_collectives(records, weights: dict) -> dict:
    """collective_bytes' sums of `records`, each counted weights[its computation] times (1 if absent)."""
    out = {k: {"count": 0, "bytes": 0, "link_bytes": 0.0} for k in KINDS + ("total",)}
    for r in records:
        w = weights.get(r["computation"], 1)
        link = r["bytes"] * _link_factor(r["kind"], r["group_size"])
        for k in (r["kind"], "total"):
            out[k]["count"] += w
            out[k]["bytes"] += w * r["bytes"]
            out[k]["link_bytes"] += w * link
    return out


_HEADER = re.compile(r"^\s*(ENTRY\s+)?%?([^\s(]+)\s*\(.*->.*\{\s*$")
_WHILE = re.compile(r"\bwhile\(.*\bcondition=%?([^\s,]+),\s*body=%?([^\s,]+)")
_CALLED = re.compile(r"\b(?:calls|to_apply|branch_computations|called_computations)=(\{[^}]*\}|%?[^\s,]+)")


def computations(hlo_text: str) -> tuple[dict, str]:
    """({computation name: its instruction lines}, the entry computation's name). Lines outside
    any computation (a bare list of instructions) form the computation '' (taken as the entry)."""
    comps, entry, current = {"": []}, "", ""
    for line in hlo_text.splitlines():
        m = _HEADER.match(line)
        if m:
            current = m.group(2)
            comps[current] = []
            if m.group(1):
                entry = current
        elif line.strip() == "}":
            current = ""
        else:
            comps[current].append(line)
    return comps, entry


def while_trip_count(condition_lines) -> int | None:
    """The trip count of a while loop from its condition computation: `counter < N` with one
    integer constant N (the form of XLA's windowed einsums, scans and lax.map loops), else None."""
    text = "\n".join(condition_lines)
    constants = re.findall(r"[su](?:32|64)\[\][^=]*?constant\((\d+)\)", text)
    if len(constants) == 1 and "direction=LT" in text:
        return int(constants[0])
    return None


def loop_weights(hlo_text: str) -> tuple[dict, int]:
    """({computation: how many times one step runs it}, number of while loops whose trip count
    could not be read, taken as 1): a while body runs trip-count times per run of its caller,
    every other called computation (fusions, async wrappers, reducers, branches) once per call."""
    comps, entry = computations(hlo_text)
    callers: dict = {}
    unknown = 0
    for name, lines in comps.items():
        for line in lines:
            w = _WHILE.search(line)
            if w:
                trip = while_trip_count(comps.get(w.group(1), []))
                unknown += trip is None
                callers.setdefault(w.group(2), []).append((name, trip or 1))
                callers.setdefault(w.group(1), []).append((name, (trip or 1) + 1))
                continue
            for ref in _CALLED.findall(line):
                for callee in re.findall(r"%?([^\s{},%]+)", ref):
                    callers.setdefault(callee, []).append((name, 1))
    weights: dict = {}

    def weight(name, seen=()):
        if name in weights:
            return weights[name]
        if name in ("", entry) or name not in callers or name in seen:
            return 1
        weights[name] = sum(weight(c, seen + (name,)) * k for c, k in callers[name])
        return weights[name]

    return {name: weight(name) for name in comps}, unknown


def collective_bytes_per_step(hlo_text: str) -> dict:
    """`collective_bytes` with each op counted as often as one step runs it: an op in a while
    body times the loop's trip count (nested loops multiply). On TPU, FSDP's windowed einsums
    (all-gathers and reduce-scatters as loops of collective-permutes), lax.map / scan bodies and
    iterative solvers are such loops; the static count sees each body once. Adds
    'unknown_trip_loops': loops whose trip count could not be read (counted once)."""
    weights, unknown = loop_weights(hlo_text)
    out = _sum_collectives(parse_collectives(hlo_text), weights)
    out["unknown_trip_loops"] = unknown
    return out


def ideal_bytes(param_bytes: int, strategy: str, *, data: int = 1, fsdp: int = 1,
                replicated_bytes: int = 0, forward_only_bytes: int = 0) -> dict:
    """The least collective bytes per device of one training step, per kind, in the same
    per-device buffer convention as `collective_bytes`.

    param_bytes: bytes of the trained parameters (= of their gradients) that are split
      over `fsdp` (all of them under 'dp').
    strategy:
      'dp'   data parallelism: one all-reduce of the gradients -> all-reduce = param_bytes.
      'fsdp' FSDP (ZeRO-3): every sharded weight all-gathered once (result = its full
             size) and its gradient reduce-scattered once (operand = its full size) ->
             all-gather = reduce-scatter = param_bytes, 2x param_bytes in all.
      'hsdp' data > 1 and fsdp > 1: as 'fsdp' within an fsdp group, plus the all-reduce
             over `data` of the gradient shard each device keeps (param_bytes / fsdp).
    replicated_bytes: trained parameters that stay whole on every device under fsdp/hsdp
      (leaves below parallel.FSDP_MIN_SIZE): their gradients are all-reduced as under dp.
    forward_only_bytes: sharded parameters that are only read, never trained (a momentum
      target's weights under fsdp/hsdp): one all-gather each.

    Not included (they are extra in every measured program): the small all-reduces of
    BatchNorm batch statistics and of the loss and metrics over the split batch, and any
    per-layer norm reductions of the optimizer (LARS) over sharded weights.

    Caveats when reading measured/ideal: the fsdp ideal gathers each weight once, i.e.
    assumes the gathered weight is kept from the forward to the backward pass; an FSDP that
    gathers it again for the backward (PyTorch FSDP does; XLA often does) moves 3x
    param_bytes, ratio ~1.5. Nor is the ideal a lower bound: where a layer's activations
    are smaller than its weights (small batch, large dense layers) the SPMD partitioner may
    keep the weights split and move activations instead (ratio < 1). A data-parallel ratio
    far below 1 means the gradients were not all-reduced, i.e. the compute was replicated
    rather than split over the batch.
    """
    if strategy == "dp":
        ar, ag, rs = param_bytes + replicated_bytes, 0, 0
    elif strategy == "fsdp":
        ar, ag, rs = replicated_bytes, param_bytes + forward_only_bytes, param_bytes
    elif strategy == "hsdp":
        ar = replicated_bytes + param_bytes // max(fsdp, 1)
        ag, rs = param_bytes + forward_only_bytes, param_bytes
    else:
        raise ValueError(f"unknown strategy {strategy!r}; one of 'dp', 'fsdp', 'hsdp'")
    out = {"all-reduce": ar, "all-gather": ag, "reduce-scatter": rs}
    out["total"] = ar + ag + rs
    return out


def strategy_of(data: int, fsdp: int) -> str:
    """'dp' if fsdp == 1, 'fsdp' if data == 1, else 'hsdp'."""
    return "dp" if fsdp == 1 else ("fsdp" if data == 1 else "hsdp")


def tree_bytes(tree) -> int:
    """Bytes of every leaf of a pytree of arrays or ShapeDtypeStructs."""
    import jax
    return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree)))


def split_bytes(tree, fsdp: int) -> tuple[int, int]:
    """(bytes of the leaves split over `fsdp`, bytes of those kept whole), per parallel.fsdp_spec."""
    import jax
    from ssl_jax import parallel
    split = whole = 0
    for x in jax.tree.leaves(tree):
        n = np.dtype(x.dtype).itemsize * int(np.prod(np.shape(x)))
        if parallel.fsdp_spec(tuple(np.shape(x)), fsdp) == parallel.P():
            whole += n
        else:
            split += n
    return split, whole


def collective_report(hlo_text: str, state, mesh) -> dict:
    """The collective bytes per kind of a compiled train step's HLO, the ideal for its mesh
    (`ideal_bytes`: the state's trained params, and a momentum target's weights as read-only
    under FSDP) and the ratio measured/ideal of the totals (None on one device)."""
    from ssl_jax import parallel
    data, fsdp = mesh.shape[parallel.DATA_AXIS], mesh.shape[parallel.FSDP_AXIS]
    strategy = strategy_of(data, fsdp)
    measured = collective_bytes(hlo_text)
    trained = state.params
    # Weights that are read but not trained (a momentum target) are gathered under FSDP.
    ms = state.method_state
    target = ms.get("target", {}).get("params", {}) if hasattr(ms, "get") else {}
    if strategy == "dp":
        ideal = ideal_bytes(tree_bytes(trained), "dp")
    else:
        split, whole = split_bytes(trained, fsdp)
        ideal = ideal_bytes(split, strategy, data=data, fsdp=fsdp, replicated_bytes=whole,
                            forward_only_bytes=split_bytes(target, fsdp)[0])
    if mesh.devices.size == 1:
        ideal = {k: 0 for k in ideal}
    total = measured["total"]["bytes"]
    per_step = collective_bytes_per_step(hlo_text)
    return {
        "strategy": strategy,
        "param_bytes": tree_bytes(trained),
        "target_param_bytes": tree_bytes(target),
        "collectives": {k: {"count": v["count"], "bytes": v["bytes"],
                            "link_bytes": None if math.isnan(v["link_bytes"]) else int(v["link_bytes"])}
                        for k, v in measured.items() if v["count"] or k == "total"},
        "ideal_collective_bytes": ideal,
        "collective_over_ideal": round(total / ideal["total"], 4) if ideal["total"] else None,
        # Each op times the while-loop iterations that run it (collective_bytes_per_step).
        "collectives_per_step": {k: {"count": v["count"], "bytes": v["bytes"],
                                     "link_bytes": None if math.isnan(v["link_bytes"]) else int(v["link_bytes"])}
                                 for k, v in per_step.items() if k != "unknown_trip_loops" and (v["count"] or k == "total")},
        "unknown_trip_loops": per_step["unknown_trip_loops"],
        "per_step_over_ideal": round(per_step["total"]["bytes"] / ideal["total"], 4) if ideal["total"] else None,
    }
