#!/usr/bin/env python3
# Import cycles between the modules of one crate: `crate::a` / `crate::a::b` paths in code
# (comments and #[cfg(test)] code left out). A module is a top-level file, or a file one level
# down in a folder module (`proxy/outbound.rs` is `proxy::outbound`); both levels are checked.
# Usage: python3 .ci/import-cycles.py dataplane/src   (exit 1 when a cycle is found)
import os
import re
import sys

root = sys.argv[1]
files = {}
for dp, _, fn in os.walk(root):
    for f in fn:
        if not f.endswith('.rs'):
            continue
        rel = os.path.relpath(os.path.join(dp, f), root)
        parts = rel[:-3].split('/')
        if parts[-1] in ('tests', 'lib', 'main', 'mod') and len(parts) == 1:
            continue
        if 'tests' in parts:
            continue
        if parts[-1] == 'mod':
            parts = parts[:-1]
        files[rel] = parts

folders = {p[0] for p in files.values() if len(p) > 1}


def key(parts, deep):
    if deep and parts[0] in folders and len(parts) > 1:
        return parts[0] + '::' + parts[1]
    return parts[0]


def deps_of(text):
    text = text.split('#[cfg(test)]')[0]
    text = '\n'.join(l for l in text.split('\n') if not l.strip().startswith('//'))
    out = set()
    for m in re.finditer(r'crate::((?:[a-z_]+::)*[a-z_]+)', text):
        out.add(tuple(m.group(1).split('::')))
    for grp in re.findall(r'crate::\{([^;]*)\}\s*;', text, re.S):
        for m in re.finditer(r'(?:^|[,{\s])((?:[a-z_]+::)*[a-z_]+)(?=::\{|\s*[,}]|\s*$|::[A-Z])', grp):
            out.add(tuple(m.group(1).split('::')))
    return out


def cycles(deep):
    edges = {}
    for rel, parts in files.items():
        me = key(parts, deep)
        text = open(os.path.join(root, rel)).read()
        for d in deps_of(text):
            k = key(list(d), deep)
            if k != me:
                edges.setdefault(me, set()).add(k)
        edges.setdefault(me, set())
    names = set(edges)
    edges = {m: {d for d in ds if d in names} for m, ds in edges.items()}
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
                found.append((comp, edges))

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return found, len(names)


bad = False
for deep in (False, True):
    found, n = cycles(deep)
    level = 'modules and submodules' if deep else 'top-level modules'
    for comp, edges in found:
        bad = True
        print(f'cycle among {level}: {sorted(comp)}')
        for a in sorted(comp):
            print('   ', a, '->', sorted(edges[a] & set(comp)))
    if not found:
        print(f'no cycles among the {n} {level} of {root}')
sys.exit(1 if bad else 0)
