"""Deployment: the recurrent step as ONNX (``lram export``) and a gRPC policy server with per-session state
(``lram serve``; protocol in ``proto/policy.proto``)."""
