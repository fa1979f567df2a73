"""PyTorch reference of the EDM networks and the official-style DI / SIM train steps (for benchmarks)."""
