"""End to end: real ``batchserve serve`` processes on loopback ports, and the planning
commands against them."""
