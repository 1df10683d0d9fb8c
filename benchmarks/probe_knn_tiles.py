import time, torch, sys
sys.path.insert(0, ".")
from cluster_service.cluster import torch_ops as T
dev = torch.device("cuda")
n, d = 1_000_000, 384
x = torch.randn(n, d, device=dev)
def timed(name, f):
    torch.cuda.synchronize(); t = time.perf_counter(); f(); torch.cuda.synchronize()
    print(f"{name}: {time.perf_counter() - t:.2f} s", flush=True)
R, C = 8192, 65536
xb = x[:R]; xh = x.half(); xbh = xh[:R]
norms = (x * x).sum(1)
tiles = (n // C)
def mm32():
    for c in range(0, n, C): d_ = xb @ x[c:c+C].T
def mm16():
    for c in range(0, n, C): d_ = (xbh @ xh[c:c+C].T)
def mm16f():
    for c in range(0, n, C):
        d_ = (xbh @ xh[c:c+C].T).float(); d_.mul_(-2.0).add_(norms[None, c:c+C])
def full_tk():
    for c in range(0, n, C):
        d_ = (xbh @ xh[c:c+C].T).float(); d_.mul_(-2.0).add_(norms[None, c:c+C]); torch.topk(d_, 33, dim=1, largest=False, sorted=False)
def grp_tk():
    for c in range(0, n, C):
        d_ = (xbh @ xh[c:c+C].T).float(); d_.mul_(-2.0).add_(norms[None, c:c+C]); T._tile_topk(d_, 33)
for name, f in [("mm32 one row block", mm32), ("mm16", mm16), ("mm16+float+axpy", mm16f), ("+topk", full_tk), ("+group topk", grp_tk)]:
    f(); timed(name, f)
print("row blocks per 1M:", n // R)
timed("knn_torch 200K", lambda: T.knn_torch(x[:200_000].cpu().numpy(), 16, dev))
x2 = x[:200_000].cpu().numpy()

from cluster_service.cluster.knn import recall
got = T.knn_torch(x2, 16, dev)
print("recall@16 fp16 tiles on 200K gaussian:", recall(x2, got, 16, 500), flush=True)
xs = torch.randn(2_000_000, 768, device=dev).cpu().numpy()
timed("knn_torch 2M x 768 (first graph)", lambda: T.knn_torch(xs, 16, dev))
