"""Ray Serve replicas against the single-process server, as a user would run them: `erank-fast
serve --model erank-smol` (2 threads) and `--replicas 2 --threads-per-replica 1`, the same
bounded loopback load (32 /v1/rerank requests of 10 DL19 passages, 8 at a time, after 2
warm-up requests): start-up, errors, p50/p99 latency, docs/s, and the largest score difference
between the two. Needs the ray and serve extras and ../shared/data.

    python bench/serve_replicas.py
"""
import concurrent.futures
import json
import os
import signal
import socket
import statistics
import subprocess
import time

import httpx

rows=[json.loads(l) for l in open(os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'dl19-bm25-top100.jsonl'))][:8]
reqs=[(r['query'], [c['text'] for c in r['candidates'][i*10:(i+1)*10]]) for r in rows for i in range(4)]  # 32 requests x 10 docs
env={**os.environ, "RAY_AUTH_MODE":"disabled", "RAY_USAGE_STATS_ENABLED":"0"}
def run(extra, label):
    with socket.socket() as s:
        s.bind(("127.0.0.1",0)); port=s.getsockname()[1]
    p=subprocess.Popen(["erank-fast","serve","--model","erank-smol","--port",str(port),*extra],env=env,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL,start_new_session=True)
    url=f"http://127.0.0.1:{port}"; t0=time.time()
    while True:
        try:
            if httpx.get(url+"/health",timeout=2).status_code==200: break
        except httpx.TransportError: pass
        time.sleep(0.5)
    up=time.time()-t0
    for q,d in reqs[:2]: httpx.post(url+"/v1/rerank",json={"query":q,"documents":d},timeout=300)
    def post(r):
        t=time.perf_counter(); resp=httpx.post(url+"/v1/rerank",json={"query":r[0],"documents":r[1]},timeout=300); return time.perf_counter()-t, resp
    t=time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as ex: out=list(ex.map(post,reqs))
    wall=time.perf_counter()-t
    os.killpg(p.pid, signal.SIGTERM); p.wait(timeout=60)
    lat=sorted(x for x,_ in out); errs=sum(r.status_code!=200 for _,r in out)
    res=[{x["index"]:x["relevance_score"] for x in r.json()["results"]} if r.status_code==200 else None for _,r in out]
    q=statistics.quantiles(lat,n=100)
    print(json.dumps({"label":label,"startup_s":round(up,1),"requests":len(reqs),"errors":errs,"p50":round(statistics.median(lat),2),"p99":round(q[98],2),"docs_per_s":round(320/wall,2)}),flush=True)
    return res
a=run([], "single process, 2 threads")
b=run(["--replicas","2","--threads-per-replica","1"], "Ray Serve, 2 replicas x 1 thread")
d=max(abs(a[i][k]-b[i][k]) for i in range(len(a)) for k in a[i])
same=all(sorted(a[i],key=a[i].get)==sorted(b[i],key=b[i].get) for i in range(len(a)))
print(json.dumps({"max_abs_score_diff":d,"same_order":same}))
