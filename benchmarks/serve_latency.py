"""Round-trip latency of `lram serve` (a server process, gRPC on localhost) vs the same step in-process.

Usage: python benchmarks/serve_latency.py [--size 16M] [--backbone xlstm[1:0]] [--repeats 200]
Prints median milliseconds per Act for: the in-process agent, one gRPC session, and 4 interleaved sessions.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lram.bench.latency import time_call
from lram.models import LRAMPolicy
from lram.models.domain import DomainSpec, TaskSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="16M")
    p.add_argument("--backbone", default="xlstm[1:0]")
    p.add_argument("--repeats", type=int, default=200)
    a = p.parse_args()
    import grpc

    from lram.serving.proto import policy_pb2 as pb
    from lram.serving.proto import policy_pb2_grpc as pb_grpc

    torch.manual_seed(0)
    policy = LRAMPolicy.from_preset(a.size, a.backbone, use_images=False).eval()
    domains = [DomainSpec("dmcontrol", False, 100.0, tasks={"walker-walk": TaskSpec("walker-walk", 6, None, (204,), 900.0)})]
    obs = np.random.default_rng(0).normal(size=204).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        policy.save_pretrained(Path(d) / "run", domains)
        with socket.socket() as sock:  # a free port for the server process
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "lram", "serve", str(Path(d) / "run"), "--address",
                                   f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL)
        stub = pb_grpc.PolicyServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        for _ in range(120):  # wait until it serves
            try:
                stub.Info(pb.InfoRequest())
                break
            except grpc.RpcError:
                time.sleep(0.5)
        sids = [stub.OpenSession(pb.OpenSessionRequest(domain="dmcontrol")).session_id for _ in range(4)]
        request = pb.ActRequest(session_id=sids[0], observation=obs.tolist(), reward=0.1)
        one = time_call(lambda: stub.Act(request), a.repeats, 20)
        requests = [pb.ActRequest(session_id=s, observation=obs.tolist(), reward=0.1) for s in sids]
        four = time_call(lambda: [stub.Act(r) for r in requests], a.repeats // 4, 5)
        server.terminate()
        server.wait()
    # in-process last: this process's own OpenMP threads would otherwise spin while the server works
    agent = policy.make_agent(1, discrete=False, action_dims=6, reward_scale=100.0)
    with torch.inference_mode():
        local = time_call(lambda: agent.act(torch.from_numpy(obs)[None], torch.zeros(1), torch.ones(1)), a.repeats, 20)
    print(f"{a.size} {a.backbone}, 204-d observation, 6-d action, median ms per Act: in-process agent "
          f"{local['median_ms']:.2f}, gRPC one session {one['median_ms']:.2f}, gRPC 4 interleaved sessions "
          f"{four['median_ms'] / 4:.2f} (overhead of the server {one['median_ms'] - local['median_ms']:.2f} ms)")


if __name__ == "__main__":
    main()
