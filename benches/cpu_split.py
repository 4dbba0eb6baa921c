#!/usr/bin/env python3
"""cpu_split.py DBNAME CMD...: runs CMD and prints its wall time, its own CPU time (user +
system), the CPU time of the server backends connected to database DBNAME (read from
/proc every 10 ms; run as the server's user or root) and its peak RSS. On a loaded machine
CPU time says what wall time cannot."""
import os, sys, time, subprocess, resource
db = sys.argv[1]; cmd = sys.argv[2:]
tick = os.sysconf('SC_CLK_TCK')
def backends():
    out = {}
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        try:
            with open(f'/proc/{pid}/cmdline','rb') as f: cl = f.read()
            if not cl.startswith(b'postgres: ') or f' {db} '.encode() not in cl: continue
            with open(f'/proc/{pid}/stat') as f: st = f.read().rsplit(')',1)[1].split()
            out[pid] = int(st[11]) + int(st[12])
        except OSError: pass
    return out
seen = {}
base = backends()
start = time.time()
p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while p.poll() is None:
    for pid, t in backends().items(): seen[pid] = max(seen.get(pid, 0), t)
    time.sleep(0.01)
wall = time.time() - start
for pid, t in backends().items(): seen[pid] = max(seen.get(pid, 0), t)
server = sum(t - base.get(pid, 0) for pid, t in seen.items()) / tick
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"wall {wall:.2f} client {ru.ru_utime+ru.ru_stime:.2f} server {server:.2f} rc {p.returncode} rss {ru.ru_maxrss//1024}")
