"""Benchmarks: registry requests, push-to-commit latency and running cost, measured.

``python -m benchmarks {reference,saturation,scale,replicas,all}`` starts the real
daemon (``python -m watcher run``), a real ``redis-server``, the Google-registry
emulator and a bare git remote, runs in compressed time and writes
``benchmarks/results/<scenario>.json|.md|.png``. The baseline (how
argocd-image-updater behaves today) runs in the same run as ``reference``;
see ``benchmarks/baseline.py`` for where each of its behaviours comes from.
"""
