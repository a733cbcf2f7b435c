#!/usr/bin/env python3
"""Fail when the modules of a crate import each other in a circle.

The graph: module A -> B when A's source names `crate::B...` or `super::B`
(its parent's sibling). A parent's `mod`/`pub use` of its own children is
not an edge. Usage: module_cycles.py CRATE_SRC_DIR...
"""
import os
import re
import sys


def graph(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            parts = os.path.relpath(path, src)[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts[0] == "bin" or parts in (["main"], ["lib"]):
                continue
            text = open(path, encoding="utf-8").read()
            deps = {m.group(1) for m in re.finditer(r"crate::([a-z_]+(?:::[a-z_]+)?)", text)}
            for m in re.finditer(r"super::([a-z_]+)", text):
                deps.add("::".join(parts[:-1] + [m.group(1)]))
            mods["::".join(parts)] = deps
    names = set(mods)

    def resolve(dep):
        ps = dep.split("::")
        for k in range(len(ps), 0, -1):
            if "::".join(ps[:k]) in names:
                return "::".join(ps[:k])
        return None

    return {m: {resolve(d) for d in ds} - {None, m} for m, ds in mods.items()}


def cycles(g):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            visit(v)
    return out


bad = False
for src in sys.argv[1:]:
    found = cycles(graph(src))
    for c in found:
        print(f"{src}: modules in a circle: {' -> '.join(c)}")
    bad |= bool(found)
sys.exit(1 if bad else 0)
