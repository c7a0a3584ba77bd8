#!/usr/bin/env python3
# Import cycles between the top-level modules of one crate (`use crate::x` edges, comments and
# #[cfg(test)] code left out). Usage: python3 .ci/import-cycles.py dataplane/src
import re,os,sys,itertools
root=sys.argv[1]
mods={}
for dp,dn,fn in os.walk(root):
    for f in fn:
        if not f.endswith('.rs'): continue
        p=os.path.join(dp,f); rel=os.path.relpath(p,root)
        top=rel.split('/')[0].replace('.rs','')
        if top in('lib','main'): continue
        if '/tests' in rel or rel.endswith('tests.rs'): continue
        s=open(p).read()
        # strip cfg(test) modules roughly
        s=s.split('#[cfg(test)]')[0]
        s='\n'.join(l for l in s.split('\n') if not l.strip().startswith('//'))
        deps=set(re.findall(r'crate::([a-z_]+)',s))
        for grp in re.findall(r'crate::\{([^;]*)\}\s*;',s,re.S):
            deps.update(re.findall(r'(?:^|[,{\s])([a-z_]+)(?=::|\s*[,}]|\s*$)',grp))
        # `use super::X` from a nested file refers to top-level parent: ignore
        mods.setdefault(top,set()).update(d for d in deps if d!=top)
names=set(mods)
edges={m:{d for d in ds if d in names} for m,ds in mods.items()}
# find cycles via SCC (Tarjan)
idx={};low={};st=[];on=set();out=[];c=[0]
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in edges[v]:
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: out.append(comp)
sys.setrecursionlimit(10000)
for v in edges:
    if v not in idx: sc(v)
for comp in out:
    print("cycle:",sorted(comp))
    for a in comp:
        print("  ",a,"->",sorted(edges[a]&set(comp)))
if not out: print("no cycles among", len(names), "modules of", root)
