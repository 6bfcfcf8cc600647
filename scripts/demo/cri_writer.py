"""Writes stdin (an Envoy's stderr) as a container runtime would: containerd's CRI log format,
lines over 16 KiB split into P pieces, into a kubelet-style /var/log/pods path."""
import datetime
import sys

SPLIT = 16384
with open(sys.argv[1], "ab", buffering=0) as out:
    for line in sys.stdin.buffer:
        line = line.rstrip(b"\n").rstrip(b"\r")
        pieces = [line[i:i + SPLIT] for i in range(0, len(line), SPLIT)] or [b""]
        for i, piece in enumerate(pieces):
            now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            tag = b"F" if i == len(pieces) - 1 else b"P"
            out.write(now.encode() + b" stderr " + tag + b" " + piece + b"\n")
