"""Boundary refinement: patch sampling, the network, reassembly, gating, weights and the Refiner."""
