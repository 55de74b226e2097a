"""Log-flood task: write exactly BYTES bytes of numbered 100-byte lines to stdout, fast.

Usage: python flood.py NAME BYTES
"""
import sys

name, total = sys.argv[1], int(sys.argv[2])
out = sys.stdout.buffer
pad = 100 - len(f"{name} line 00000000 ") - 1
chunk_lines = 640  # 64,000 bytes per write
written = 0
i = 0
while written < total:
    lines = []
    for _ in range(chunk_lines):
        lines.append(f"{name} line {i:08d} {'x' * pad}\n".encode())
        i += 1
    block = b"".join(lines)
    block = block[: total - written]
    out.write(block)
    written += len(block)
out.flush()
